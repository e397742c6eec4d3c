# compiled HLO of a symmetrized vi step, with and without traceback locations: same once metadata is stripped?
import re, sys, jax, jax.numpy as jnp, numpy as np, hashlib
sys.path.insert(0, "tests")
from symvi_jax import MLP, PermutationGroup, vi, meanfield
import optax
model = MLP(features=(30, 10))
params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
group = PermutationGroup.from_params(params)
x = jax.random.normal(jax.random.key(1), (100, 784)); y = jax.random.randint(jax.random.key(2), (100,), 0, 10)
def loglik(p, batch):
    logits = model.apply({"params": p}, batch[0]); return jax.nn.log_softmax(logits)[jnp.arange(batch[0].shape[0]), batch[1]]
print(jax.config.jax_traceback_in_locations_limit)
alg = vi.build(loglik, optax.adam(1e-3), data_size=60000, objective="symmetrized_elbo", group=group, num_permutations=20)
state = alg.init(params)
step = jax.jit(alg.step)
lowered = step.lower(jax.random.key(4), state, (x, y))
compiled = lowered.compile()
text = compiled.as_text()
stripped = re.sub(r", metadata=\{[^}]*\}", "", text)
out = compiled(jax.random.key(4), state, (x, y))
leaves = jax.tree.leaves(out)
print("hlo", hashlib.sha256(stripped.encode()).hexdigest()[:16], "out", hashlib.sha256(b"".join(np.asarray(l).tobytes() for l in leaves)).hexdigest()[:16], "mlir chars", len(lowered.as_text(debug_info=True)))
