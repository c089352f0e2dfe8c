"""Neuroformer: a multimodal generative simulator of neural population activity."""
from setuptools import find_packages, setup

setup(
    name="neuroformer",
    version="0.1.0",
    description="Multimodal generative simulator of neural population activity",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["neuroformer", "neuroformer.*"]),
    package_data={"neuroformer": ["configs/*.yaml"]},
    install_requires=[
        # Install torch and torchvision as a matching pair in the same pip call
        # (README and .ci/run pin torch==2.14.1 torchvision==0.29.1).
        "torch>=2.4",
        "torchvision>=0.19",
        "torch-brain==0.2.1",
        "numpy>=1.20",                  # as torch-brain 0.2.1 asks; nothing here needs numpy 2
        "h5py>=3.0",                    # string datasets and attributes read as h5py 3 returns them
        "pynwb>=2.2",                   # behaviour containers, external-file ImageSeries (as torch-brain asks)
        "opencv-python-headless",
        "matplotlib>=3.1",              # Figure.subplots and saving a Figure without pyplot (plots.py)
        "scipy",
        "scikit-learn>=1.8",            # LogisticRegression(l1_ratio=1.0) is L1 only from 1.8 (L2 before)
        "pyyaml",
        "oasis-deconv>=0.3.2",          # calcium traces deconvolved into events (data/calcium.py)
        "tqdm",
    ],
    extras_require={"dev": ["pytest", "pytest-xdist"]},
    entry_points={"console_scripts": ["neuroformer=neuroformer.cli:main"]},
)
