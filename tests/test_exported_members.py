"""The public surface: everything in ``lightning_otlp.__all__`` exists, and nothing else leaks."""

from __future__ import annotations
import __future__

import lightning_otlp


def test_all_lists_the_public_api() -> None:
    assert sorted(lightning_otlp.__all__) == [
        "RolloutIds",
        "RolloutSpanProcessor",
        "__version__",
        "current_rollout",
        "emit_reward",
        "rollout",
    ]


def test_every_exported_member_exists_and_is_reexported() -> None:
    for name in lightning_otlp.__all__:
        member = getattr(lightning_otlp, name)
        if name != "__version__":
            assert member.__module__.startswith("lightning_otlp.sdk"), name


def test_public_names_are_all_in_all() -> None:
    public = {
        name
        for name, value in vars(lightning_otlp).items()
        if not name.startswith("_")
        and type(value).__name__ != "module"
        and not isinstance(value, __future__._Feature)
    }
    assert public <= set(lightning_otlp.__all__)
