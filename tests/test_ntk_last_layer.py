"""The closed-form last-layer kernel against autodiff on the classifier's parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npc_jax import ntk
from npc_jax.models import CLASSIFIER, get_model


def _autodiff_last_layer_ntk(model, variables, x1, x2):
    def logits_from_classifier(classifier, x):
        params = {**variables["params"], CLASSIFIER: classifier}
        return model.apply_fn({**variables, "params": params}, x)

    classifier = variables["params"][CLASSIFIER]
    flat = lambda x: jnp.concatenate(
        [j.reshape(x.shape[0], model.num_classes, -1) for j in
         jax.tree_util.tree_leaves(jax.jacrev(logits_from_classifier)(classifier, x))], -1)
    j1, j2 = flat(x1), flat(x2)  # (n, C, P)
    return jnp.einsum("icp,jcp->ij", j1, j2)  # trace over the class axis


@pytest.mark.parametrize("num_classes", [3, 10])
def test_closed_form_equals_autodiff(num_classes):
    model = get_model("cnn", num_classes)
    variables = model.init(jax.random.PRNGKey(0))
    x1 = jax.random.uniform(jax.random.PRNGKey(1), (5, 28, 28, 1))
    x2 = jax.random.uniform(jax.random.PRNGKey(2), (3, 28, 28, 1))
    _, h1 = model.apply_with_features(variables, x1)
    _, h2 = model.apply_with_features(variables, x2)
    closed = ntk.last_layer_ntk(h1, h2, num_classes)
    reference = _autodiff_last_layer_ntk(model, variables, x1, x2)
    np.testing.assert_allclose(closed, reference, rtol=1e-5, atol=1e-5)
    phi1 = ntk.last_layer_feature_map(h1, num_classes)
    phi2 = ntk.last_layer_feature_map(h2, num_classes)
    np.testing.assert_allclose(phi1 @ phi2.T, reference, rtol=1e-5, atol=1e-5)
