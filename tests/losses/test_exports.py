"""``selfsup.losses`` re-exports every loss module's ``__all__``, so a new loss module cannot be forgotten."""
import importlib
import pkgutil

import selfsup.losses


def test_every_loss_module_is_re_exported():
    for info in pkgutil.iter_modules(selfsup.losses.__path__):
        module = importlib.import_module(f"selfsup.losses.{info.name}")
        assert hasattr(module, "__all__"), f"selfsup.losses.{info.name} has no __all__"
        for name in module.__all__:
            assert getattr(selfsup.losses, name, None) is getattr(module, name), \
                f"selfsup.losses does not re-export {info.name}.{name}"
            assert name in selfsup.losses.__all__, f"{name} is missing from selfsup.losses.__all__"
