"""The persistent compile cache: a second process loads what the first compiled."""

import subprocess
import sys

SCRIPT = """
import jax, jax.numpy as jnp
from symvi_jax import compilation
path = compilation.enable_cache(sys.argv[1])
with compilation.CompileStats() as stats:
    jax.jit(lambda x: jnp.tanh(x) @ x.T + 2.0)(jnp.ones((7, 7))).block_until_ready()
print(stats.cache_hits, stats.cache_misses)
"""


def test_second_process_hits_the_persistent_cache(tmp_path):
    runs = [subprocess.run([sys.executable, "-c", "import sys\n" + SCRIPT, str(tmp_path / "cache")],
                           capture_output=True, text=True, check=True).stdout.split() for _ in range(2)]
    (hits1, misses1), (hits2, misses2) = [tuple(map(int, r[-2:])) for r in runs]
    assert misses1 >= 1 and hits1 == 0
    assert hits2 >= 1 and misses2 == 0


def test_cli_prints_compile_time_and_cache_hits_and_a_second_run_hits(tmp_path, capsys):
    import jax

    from symvi_jax import cli

    argv = ["sign-flips", "--widths", "[2]", "--num-epochs", "5", "--num-mi-samples", "4",
            "--compile-cache", str(tmp_path / "cache")]
    before = jax.config.jax_compilation_cache_dir
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert any((tmp_path / "cache").iterdir())  # written where --compile-cache says
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    second = capsys.readouterr().out.strip().splitlines()[-1]
    assert first.startswith("compile: ") and "persistent cache" in first
    hits = int(second.split("persistent cache: ")[1].split(" hits")[0])
    assert hits >= 1, second
    assert jax.config.jax_compilation_cache_dir == before  # the CLI restores JAX's settings


def test_each_persistent_cache_block_writes_to_its_own_directory(tmp_path):
    """JAX opens its cache once per process; a second directory in the same process must still get the programs."""
    import jax
    import jax.numpy as jnp

    from symvi_jax import compilation

    for name, scale in (("first", 3.0), ("second", 5.0)):
        with compilation.persistent_cache(tmp_path / name):
            jax.jit(lambda x: jnp.sin(x) * scale)(jnp.ones(3)).block_until_ready()
        assert any("jit" in p.name for p in (tmp_path / name).iterdir()), name
    outside = jax.jit(lambda x: jnp.cos(x) * 7.0)  # after the blocks: no directory of theirs grows
    counts = [len(list((tmp_path / name).iterdir())) for name in ("first", "second")]
    outside(jnp.ones(3)).block_until_ready()
    assert [len(list((tmp_path / name).iterdir())) for name in ("first", "second")] == counts
