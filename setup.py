"""
Only for the optional C extension (tcpdemo/_scan.c, see tcpdemo/scan.py):
everything else about the project is in setup.cfg and pyproject.toml.

The extension is built on CPython only, and a failed build is not an error:
with no C compiler (or no Python headers) the install goes on without it and
tcpdemo.scan uses its pure-Python versions.
"""

from __future__ import annotations

import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """
    A build_ext whose failure leaves the package pure Python.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # noqa: BLE001 -- any failure: skip the extension
            self.warn(f"tcpdemo._scan not built, the pure-Python fallback is used: {error}")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:  # noqa: BLE001
            self.warn(f"{ext.name} not built, the pure-Python fallback is used: {error}")


extensions = []
if platform.python_implementation() == "CPython":
    extensions.append(Extension("tcpdemo._scan", ["tcpdemo/_scan.c"], optional=True))

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
