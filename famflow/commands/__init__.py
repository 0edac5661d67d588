"""The commands of ``famflow``, one module each; ``famflow.__main__`` wires them."""
