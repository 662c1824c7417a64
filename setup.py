"""Installable package for the scaling-study codebase: `pip install -e ".[dev]"`.

Version ranges are the ones this code was tested with (jax 0.10.2, flax
0.12.8, optax 0.2.8, orbax-checkpoint 0.12.8 on Python 3.11); upper bounds
keep a fresh install next month on the same minor releases. jax goes up to
0.11.x: 0.10.2 is what CI runs (the newest the package registry serves), 0.11.2
is the GPU machine's image (Python 3.12, CUDA 13), where only
benchmarks/gpu_kernels.sh runs; every jax API the code uses exists, undeprecated,
in both (checked against both releases' sources and changelogs; first run on 0.11
awaits the GPU machine, issue 19).
"""
from setuptools import find_packages, setup

setup(
    name="scaling-studies",
    version="0.1.0",
    description="JAX/Flax NNX codebase for attention, MoE and CLIP scaling studies",
    python_requires=">=3.11",
    packages=find_packages(include=["attention*", "clip*", "models*", "sharding*", "data*", "tasks*", "trainer*",
                                    "experiments*", "benchmarks*", "inference*", "kernels*", "moe*", "nn*"]),
    py_modules=["train"],
    install_requires=[
        "jax>=0.10.2,<0.12",  # 0.10.2: CI; 0.11.2: the GPU image
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "einops>=0.8,<0.9",
        "ml-collections>=1.1,<2",
        "absl-py>=2.1,<3",
        "numpy>=2.0,<3",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
        "etils[epath]>=1.7,<2",      # workdirs on any epath path, gs:// included (trainer/paths.py); orbax needs it too
        "scipy>=1.14,<2",
        "threadpoolctl>=3.1,<4",     # one BLAS thread in the scaling-law fits (experiments/study/scaling.py)
        "matplotlib>=3.9,<4",
        "pillow>=10.4,<14",
        "grain>=0.2.18,<0.3",        # the input pipeline (data/pipeline.py)
        "tokenizers>=0.23,<0.24",    # BPE training and tokenizer.json files (data/tokenizer.py)
        "sentencepiece>=0.2,<0.3",   # users' sentencepiece .model tokenizers (data/tokenizer.py)
    ],
    extras_require={
        "dev": [
            "pytest>=8,<10",
            "pytest-xdist>=3.6,<4",
            "nbclient>=0.10,<0.12",
            "nbformat>=5.10,<6",
            "ipykernel>=6.29,<8",
            "tensorboard>=2.17,<3",  # the README's `tensorboard --logdir runs/` (tensorboardX only writes)
            "wandb>=0.19,<0.32",     # the optional W&B writer's test (train.wandb_project; never imported otherwise)
        ],
    },
)
