import sys

from symvi_jax.cli import main

sys.exit(main())
