"""``python -m vitx_core ...``: see :mod:`vitx_core.cli`."""

from vitx_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
