"""RelationRouting's inference through CUDA graphs (kern_d2.layers.GraphedRowFunction) against the same module run
eagerly."""
import pytest
import torch
from torch.testing import assert_close

from kern_d2.layers import GraphedRowFunction
from kern_d2.modeling.relation_routing import RelationRouting

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_routing(device, graphs: bool, seed=0) -> RelationRouting:
    torch.manual_seed(seed)
    return RelationRouting(12, 10, 7, hidden_dim=16, output_dim=8, num_steps=3,
                           inference_cuda_graphs=graphs).to(device).eval()


def make_inputs(pairs: int, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(pairs, 12, generator=g), torch.randn(pairs, 12, generator=g),
              torch.randn(pairs, 10, generator=g), torch.softmax(torch.randn(pairs, 7, generator=g), dim=1)]
    return [t.to(device) for t in inputs]


def test_bad_arguments():
    with pytest.raises(ValueError, match="bucket and max_graphs must be positive"):
        GraphedRowFunction(lambda x: x, torch.nn.Linear(1, 1), bucket=0)


def test_without_cuda_or_with_gradients_the_module_runs_eagerly():
    graphed, eager = make_routing("cpu", True), make_routing("cpu", False)
    inputs = make_inputs(5, "cpu")
    with torch.no_grad():
        assert_close(graphed(*inputs), eager(*inputs), rtol=0, atol=0)
    assert graphed._graphed_route is None
    graphed(*inputs).sum().backward()  # gradients: the eager path
    assert graphed._graphed_route is None


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphs_match_eager_for_every_size(dtype):
    graphed, eager = make_routing("cuda", True), make_routing("cuda", False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    with torch.no_grad(), autocast:
        for pairs in (1, 255, 256, 300, 600, 300):  # buckets 256, 256, 256, 512, 768, 512 (reused)
            inputs = make_inputs(pairs, "cuda", seed=pairs)
            out = graphed(*inputs)
            assert out.shape == (pairs, 7)
            assert_close(out.float(), eager(*inputs).float(), **tolerance)
    assert len(graphed._graphed_route._graphs) == 3


@needs_cuda
def test_graphs_follow_new_weights_and_moved_parameters():
    graphed = make_routing("cuda", True)
    inputs = make_inputs(40, "cuda")
    with torch.no_grad():
        graphed(*inputs)
        other = make_routing("cuda", False, seed=5)
        graphed.load_state_dict(other.state_dict())  # in place: the captured graph reads the new values
        assert_close(graphed(*inputs), other(*inputs), rtol=1e-5, atol=1e-5)
        graphed.cpu().cuda()  # new parameter storage: recaptured
        assert_close(graphed(*inputs), other(*inputs), rtol=1e-5, atol=1e-5)
        assert len(graphed._graphed_route._graphs) == 2
