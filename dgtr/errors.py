"""Errors the CLI reports as one clear line instead of a traceback."""


class DgtrError(Exception):
    """Base class: user-facing problem with input files, arguments or checkpoints."""


class InputError(DgtrError, ValueError):
    """An argument or a tensor has the wrong shape, type or values (NaN, empty, out of range)."""


class FileFormatError(DgtrError, ValueError):
    """A file exists but cannot be read as what it should be (corrupt, missing keys, empty mesh)."""


class MissingFileError(DgtrError, FileNotFoundError):
    """A required file or folder does not exist."""
