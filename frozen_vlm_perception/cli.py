"""`fvp`: the one user-facing command."""
import sys


def main(argv=None) -> int:
    print("fvp: not yet", file=sys.stderr)
    return 1
