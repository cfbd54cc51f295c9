"""Build driver: setup.py only hands the compiled part to CMake (see CMakeLists.txt)."""
from setuptools import setup

setup()
