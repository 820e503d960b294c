#!/usr/bin/env bash
# Prepare the one-call GPU training run (issue 14 item 5; benchmarks/gpu_run.sh runs it on the device machine).
#
#   bash benchmarks/gpu_bundle.sh [DATA]        # default data/dexgraspnet; writes .gpu/ (git-ignored via .git/info/exclude)
#
# The device machine has the repository, PyTorch and most of the scientific stack, but not ../shared (the meshes)
# and not these packages, so .gpu/ carries: wheels of trimesh, fpsample, pykdtree, mujoco (+ mujoco-core, glfw) for its
# Python 3.12; the ShadowHand assets of gymnasium-robotics as a package of their own (the 26 MB wheel is all other
# robots); and the sampled object clouds of DATA's train and val splits (one per object, as `dgtr train` samples them;
# with every cloud cached, `dgtr train` needs no meshes).  Everything that travels must stay under 64 MiB with the
# repository (~34 MB): the clouds take 49 kB per object.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data/dexgraspnet}
MESHES=${MESHES:-../shared/dexgraspnet_objects/meshdata}
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu/whl .gpu/site && mkdir -p .gpu/whl .gpu/site
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms="$platforms --platform $p"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d .gpu/whl trimesh==5.2.0 fpsample==0.3.3 pykdtree==1.4.3 mujoco==4.0.1 mujoco-core==4.0.1 glfw==2.11.0
.venv/bin/python - "$DATA" "$MESHES" <<'PY'
import shutil, sys
from pathlib import Path

from dgtr.config import load
from dgtr.data import GraspDataset, read_splits
from dgtr.hand import hand_asset_dir
from dgtr.train import TrainConfig

assets = hand_asset_dir().parent                  # gymnasium_robotics/envs/assets
pkg = Path(".gpu/site/gymnasium_robotics")
for sub in ("hand", "stls/hand", "textures"):
    shutil.copytree(assets / sub, pkg / "envs" / "assets" / sub)
(pkg / "__init__.py").write_text('"""The ShadowHand assets of gymnasium-robotics only (carried by benchmarks/gpu_bundle.sh)."""\n')
shutil.copy(assets / "LICENSE.md", pkg / "envs" / "assets" / "LICENSE.md")
data, meshes = Path(sys.argv[1]), Path(sys.argv[2])
cfg = load(TrainConfig, "configs/dexgraspnet.yaml", [])
for split in ("train", "val"):
    if read_splits(data).get(split):
        ds = GraspDataset(data, split, n_points=cfg.model.n_points, seed=cfg.train.seed, meshes=meshes,
                          cache=Path(".gpu/clouds"), progress=True)
        print(f"gpu_bundle: {split}: {len(ds.clouds)} object clouds", file=sys.stderr)
PY
du -sh .gpu .gpu/* | sed 's/^/gpu_bundle: /'
