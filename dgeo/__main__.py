"""``python -m dgeo``: the same as the ``dgeo`` console script."""

from dgeo.cli.main import main

if __name__ == "__main__":
    main()
