"""`python -m semedge` is the `semedge` command."""

from semedge.cli import main

if __name__ == "__main__":
    main()
