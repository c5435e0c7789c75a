"""Advantage estimators, one module each (file name = registry key), all imported here for registration."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
