"""`python -m bit_keras ...` behaves exactly like the installed `bit_keras` command."""

from bit_keras.cli.main import run

if __name__ == "__main__":
    run()
