"""The package's one compiled part: ``lossgym._closedform``, the closed-form loss kernel (see
lossgym/_closedform.c). It is optional: where it cannot be built (no C compiler), the install
goes on and lossgym uses torch kernels instead (the same values to float precision, slower on
small batches).
Everything else is configured in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("lossgym._closedform", ["lossgym/_closedform.c"],
                             extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"],
                             optional=True)])
