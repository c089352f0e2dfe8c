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
        "numpy",
        "h5py",
        "pynwb",
        "opencv-python-headless",
        "matplotlib",
        "scipy",
        "scikit-learn",
        "pyyaml",
        "tqdm",
    ],
    extras_require={"dev": ["pytest"]},
    entry_points={"console_scripts": ["neuroformer=neuroformer.cli:main"]},
)
