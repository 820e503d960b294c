def main(argv=None):
    raise SystemExit("dgtr: not yet implemented")
