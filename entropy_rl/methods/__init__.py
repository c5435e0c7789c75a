"""The entropy-method catalogue: one module per method (file name = registry key), all imported here so that
registration happens. Adding a method is adding a file; nothing else to edit."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
