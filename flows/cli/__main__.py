"""`python -m flows.cli`: the same as `rslm`."""
from flows.cli import main

if __name__ == "__main__":  # importing this module (the import smoke test) runs nothing
    main()
