"""The torch.compile backend stage: backend="otofx" shrinks what is zero, and is never stale."""

import logging
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from otofx.passes.meta import INPUTS_KEPT, LIFTED
from otofx.passes.params_as_attrs import lifted_paths, params_as_attrs
from torch import nn

import otofx
from otofx.backend import _training_reason
from otofx.testing import zero_groups


class SmallNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, width, 1)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = y + self.conv3(torch.relu(self.bn2(self.conv2(y))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class BrokenNet(nn.Module):
    """Two subgraphs: conv1's channels cross the graph break, conv2's stay inside the second."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        torch._dynamo.graph_break()
        return self.conv3(torch.relu(self.conv2(y)))


class Recorder:
    """An inner backend that runs the graph as it is and keeps what it was given."""

    def __init__(self) -> None:
        self.graphs: list[tuple[torch.fx.GraphModule, list]] = []
        self.paths: list[dict[int, str]] = []   # read while dynamo's placeholder metadata is there

    def __call__(self, gm, example_inputs):
        self.graphs.append((gm, list(example_inputs)))
        self.paths.append(lifted_paths(gm, example_inputs))
        return gm.forward

    def tensor_elements(self, i: int = -1) -> int:
        """Elements of parameters and buffers the graph holds plus its tensor inputs."""
        gm, inputs = self.graphs[i]
        held = sum(t.numel() for t in list(gm.parameters()) + list(gm.buffers()))
        return held + sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))


def zeroed(model: nn.Module, x: torch.Tensor, fraction: float = 0.5) -> tuple:
    """``model`` (eval mode) with ``fraction`` of every prunable group zeroed in place."""
    model.eval()
    analysis = otofx.analyze(otofx.trace(model), (x,))
    return analysis, zero_groups(model, analysis, fraction)


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_equals_eager_and_inner_backend_gets_the_smaller_graph():
    torch.manual_seed(0)
    model, x = SmallNet(), torch.randn(2, 3, 8, 8)
    analysis, removed = zeroed(model, x)
    before = state(model)
    full, small = Recorder(), Recorder()
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.compile(model, backend=full)(x), expected)
        torch._dynamo.reset()
        got = torch.compile(model, backend=otofx.backend(inner=small))(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    gm = small.graphs[0][0]
    assert not any(n.op == "placeholder" and "parameters" in n.name for n in gm.graph.nodes)
    assert sum(p.numel() for p in gm.parameters()) == analysis.params_after(removed)
    assert small.tensor_elements() < full.tensor_elements()
    pins = [w for g in otofx.analyze(gm, small.graphs[0][1]).groups for w in g.why_pinned]
    assert not any("no rule" in w for w in pins), pins      # every torch-level spelling is known
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)   # the user's model is untouched


class TinyViT(nn.Module):
    """A ViT block's shape: nn.MultiheadAttention (batch first, which dynamo inlines into
    ``F.multi_head_attention_forward``), a residual stream under a LayerNorm, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(6, 16), nn.Linear(16, 3)
        self.attn, self.norm = nn.MultiheadAttention(16, 4, batch_first=True), nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.mlp(self.norm(h))
        return self.head(h.mean(1))


def _compiled_exact(build: type[nn.Module]) -> tuple:
    """Half of every prunable group of ``build()`` zeroed, compiled through the backend: the
    output equals eager, and the inner backend's graph holds exactly what otofx.trace's analysis
    says is left. Returns that graph, the analysis and the removed channels."""
    torch.manual_seed(0)
    model, x = build(), torch.randn(2, 5, 6)
    analysis, removed = zeroed(model, x)
    small = Recorder()
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model, backend=otofx.backend(inner=small))(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    gm = small.graphs[0][0]
    assert sum(p.numel() for p in gm.parameters()) == analysis.params_after(removed)
    return gm, analysis, removed


def test_inlined_multihead_attention_prunes_heads_as_the_traced_module_does():
    """Dynamo hands the backend ``F.multi_head_attention_forward`` with the weights as inputs;
    the backend's graph loses the same heads and stream channels as ``otofx.trace``'s."""
    gm, analysis, removed = _compiled_exact(TinyViT)
    assert "attn" in removed and len(removed) == len(analysis.prunable), removed   # heads, stream
    attn = gm.get_submodule("attn")
    assert attn.in_proj_weight.shape[0] == 3 * 4 * (4 - len(removed["attn"]))   # head_dim 4
    assert not any(n.target is F.multi_head_attention_forward for n in gm.graph.nodes)


def test_one_attention_module_called_twice_stays_one_module():
    """Dynamo inlines both calls of a shared ``nn.MultiheadAttention``; both become calls of one
    module again, whose heads shrink once, and the output is unchanged."""

    class Twice(TinyViT):
        def forward(self, x):
            h = self.embed(x)
            h = h + self.attn(h, h, h, need_weights=False)[0]
            h = h + self.attn(h, h, h, need_weights=False)[0]
            return self.head(self.norm(h).mean(1))

    gm, _, _ = _compiled_exact(Twice)
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target == "attn"]
    assert len(calls) == 2


def test_functional_attention_the_module_cannot_express_stays_pinned():
    """``add_zero_attn`` has no place in the module's rule: the call is left as it is, and the
    analysis pins what it touches (never a silent guess)."""
    from otofx.passes.functional_mha import mha_as_modules

    class ZeroAttn(TinyViT):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True, add_zero_attn=True)

    model, x = ZeroAttn().eval(), torch.randn(2, 5, 6)
    recorder = Recorder()
    with torch.no_grad():
        torch.compile(model, backend=recorder)(x)
    gm, inputs = recorder.graphs[0]
    lifted = params_as_attrs(gm, inputs, recorder.paths[0]).graph_module
    assert not mha_as_modules(lifted).modified
    kept = [inputs[i] for i in lifted.meta[INPUTS_KEPT]]
    pins = [w for g in otofx.analyze(lifted, kept).groups for w in g.why_pinned]
    assert any("multi_head_attention_forward" in w for w in pins), pins


class TorchBatchNorm(nn.Module):
    """``torch.batch_norm`` takes (weight, bias, mean, var); ``F.batch_norm`` (mean, var, weight, bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(4, 2, 1)
        self.w, self.b = nn.Parameter(torch.rand(4) + 0.5), nn.Parameter(torch.rand(4))
        self.register_buffer("mean", torch.rand(4))
        self.register_buffer("var", torch.rand(4) + 1)

    def forward(self, x):
        return self.out(torch.batch_norm(self.conv(x), self.w, self.b, self.mean, self.var,
                                         False, 0.1, 1e-5, False))


def test_torch_batch_norm_slices_its_affine_and_statistics_by_role():
    group = otofx.analyze(otofx.trace(TorchBatchNorm()), (torch.randn(1, 3, 4, 4),)).groups[0]
    roles = {m.param: m.role for m in group.members}
    assert roles["w"] == roles["b"] == "affine" and roles["mean"] == roles["var"] == "buffer"


def test_recompiles_stay_bounded_when_the_input_shape_changes():
    torch.manual_seed(1)
    model = SmallNet()
    zeroed(model, torch.randn(1, 3, 8, 8))
    inner = Recorder()
    compiled = torch.compile(model, backend=otofx.backend(inner=inner))
    with torch.no_grad():
        for size in (8, 10, 12, 14, 16):
            x = torch.randn(1, 3, size, size)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    assert len(inner.graphs) <= 2    # the first shape, then one dynamic-shape graph
    assert all(sum(p.numel() for p in gm.parameters()) > 0 for gm, _ in inner.graphs)


def test_parameters_changed_between_calls_never_give_stale_outputs():
    torch.manual_seed(2)
    model, x = SmallNet(), torch.randn(2, 3, 8, 8)
    zeroed(model, x)
    inner = Recorder()
    compiled = torch.compile(model, backend=otofx.backend(inner=inner, max_reshrinks=1))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
        shrunk = sum(p.numel() for p in inner.graphs[0][0].parameters())
        model.conv1.weight.fill_(0.5)        # brings every removed conv1 channel back
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
        assert len(inner.graphs) == 2          # shrunk and compiled again
        assert sum(p.numel() for p in inner.graphs[1][0].parameters()) > shrunk
        model.fc.bias.add_(1.0)                # one refresh allowed: now the unshrunk graph
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
        model.fc.bias.add_(1.0)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    assert len(inner.graphs) == 3
    assert any(n.op == "placeholder" and "parameters" in n.name for n in inner.graphs[2][0].graph.nodes)


def test_a_group_crossing_a_graph_break_is_pinned():
    torch.manual_seed(3)
    model, x = BrokenNet(), torch.randn(1, 3, 10, 10)
    zeroed(model, x)
    assert bool((model.conv1.weight.flatten(1) == 0).all(dim=1).any())     # conv1 was zeroed too
    inner = Recorder()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=otofx.backend(inner=inner))(x),
                                   model(x), rtol=1e-4, atol=1e-5)
    assert len(inner.graphs) == 2
    first, second = (dict(gm.named_parameters()) for gm, _ in inner.graphs)
    assert first == {}                  # subgraph 1 passed on unchanged: its params stay inputs
    assert any(t is model.conv1.weight for t in inner.graphs[0][1])
    assert second["conv2.weight"].shape[0] < 8 and second["conv2.weight"].shape[1] == 8


def test_training_graphs_go_to_the_inner_backend_unchanged(caplog):
    model, x = SmallNet(), torch.randn(2, 3, 8, 8)
    zeroed(model, x)
    inner = Recorder()
    with caplog.at_level(logging.INFO, logger="otofx.backend"):
        torch.compile(model, backend=otofx.backend(inner=inner))(x).sum().backward()
    gm, inputs = inner.graphs[0]
    assert any(t is model.conv1.weight for t in inputs)
    assert dict(gm.named_parameters()) == {}
    assert "autograd is recording" in caplog.text
    assert model.conv1.weight.grad is not None


def test_layers_in_training_mode_go_to_the_inner_backend_unchanged(caplog):
    model, x = SmallNet().train(), torch.randn(2, 3, 8, 8)
    zeroed(model, x)
    model.train()
    inner = Recorder()
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="otofx.backend"):
        torch.compile(model, backend=otofx.backend(inner=inner))(x)
    gm, inputs = inner.graphs[0]
    assert dict(gm.named_parameters()) == {}
    assert "training mode" in caplog.text or "in place" in caplog.text
    with torch.no_grad():
        assert _training_reason(gm, inputs) is not None
    lifted = params_as_attrs(gm, inputs, inner.paths[0]).graph_module
    assert {"bn1.num_batches_tracked", "bn1.running_mean"} <= {n for n, _ in lifted.named_buffers()}
    assert {"conv1.weight", "fc.bias"} <= {n for n, _ in lifted.named_parameters()}
    assert len(lifted.meta[INPUTS_KEPT]) == 1 and len(lifted.meta[LIFTED]) == len(inputs) - 1


def test_unknown_inner_backend_or_option_errors_before_compiling():
    with pytest.raises(otofx.ConfigError, match="no_such_backend.*Known backends:.*inductor"):
        otofx.backend(inner="no_such_backend")
    with pytest.raises(otofx.ConfigError, match="max_reshrink"):
        otofx.backend(inner="eager", max_reshrink=3)
    with pytest.raises(otofx.ConfigError, match="itself"):
        otofx.backend(inner="otofx")


def test_backend_name_works_in_a_fresh_process_that_never_imported_otofx():
    code = textwrap.dedent("""
        import logging, sys, torch
        from torch import nn
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        assert "otofx" not in sys.modules
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
        with torch.no_grad():
            model[0].weight[:4] = 0
            model[0].bias[:4] = 0
            x = torch.randn(1, 3, 8, 8)
            got = torch.compile(model, backend="otofx", options={"inner": "eager"})(x)
        assert "otofx.backend" in sys.modules      # loaded through the entry point
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout
    assert "otofx backend: removed 4 channels before eager" in result.stderr


@pytest.mark.slow   # a cold inductor compile takes 15-60 s on two shared cores
def test_the_default_inner_backend_is_inductor(caplog):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight[:4] = 0
        model[0].bias[:4] = 0
        x = torch.randn(1, 3, 8, 8)
        with torch._inductor.config.patch(compile_threads=1), \
                caplog.at_level(logging.INFO, logger="otofx.backend"):
            got = torch.compile(model, backend="otofx")(x)
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
    assert "removed 4 channels before inductor" in caplog.text
