#!/usr/bin/env python3
"""PyTorch fidelity harness: real training steps of Hugging Face transformers models, measured.

Builds a transformers model from a spec in models/ (random weights, any number of layers, never
downloaded), runs training steps the way the planner's `pytorch` profile describes them, and
records torch.cuda.max_memory_allocated / max_memory_reserved for the whole step and per phase,
the step time, the loss and the environment. Writes a measurement file in the format of
scenarios/measured/ (docs/specs.md), which `mst-plan report` and the fidelity test read.

Methods are the planner's (planner/plan.cpp):
  vanilla      plain autograd: no chunking, no recomputation, logits kept (transformers' loss)
  recompute    torch.utils.checkpoint around every decoder layer (use_reentrant=False)
  mst          recompute + MLP in mini-sequences of d tokens + LM head and loss in ceil(V/d)
               chunks; `--mlp-mode paper|tiled` and `--lm-head-mode recompute|forward-grad`
               select the variants (paper: torch.tensor_split, plain autograd per chunk, cat;
               tiled: a Function keeping only the MLP input, recomputing each chunk in backward;
               LM head recompute: a Function keeping the hidden states, logits recomputed chunk
               by chunk in backward; forward-grad: gradients computed chunk by chunk in forward)
  mst-offload  not run: torch offload hooks are not the planner's copy-stream model
The optimizer is AdamW (torch.optim, single-tensor) either per parameter inside backward
(register_post_accumulate_grad_hook; the planner's default) or after backward (foreach).

Usage (on a machine with a GPU, PyTorch and transformers; no network needed):
  python3 scripts/pytorch/harness.py --gpu H100-80G --out gpu-out/pytorch --minutes 12
  python3 scripts/pytorch/harness.py --list                # the grid (no torch needed), as a file
                                                           # mst-plan fidelity can read
  python3 scripts/pytorch/harness.py --smoke --device cpu  # MST's chunked Functions against plain
                                                           # autograd (fp32), then tiny steps (needs torch)

Phases (each peak measured since the previous boundary): forward (embedding, layers, final
norm), loss (LM head and loss forward, and their backward up to the gradient of the final hidden
states: a tensor hook marks it), backward (the layers), optimizer (AdamW after backward; empty
when it runs inside backward).
"""

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# --- Specs and the grid (no torch needed) -----------------------------------------------------


def load_spec(name):
    """A model spec from models/NAME.yaml, as a dict (field names follow config.json)."""
    import yaml  # PyYAML: a dependency of transformers, and python3-yaml on Debian

    path = os.path.join(ROOT, "models", name + ".yaml")
    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict) or spec.get("name") != name:
        raise SystemExit(f"{path}: not the model spec of {name}")
    return spec


def chunk_count(positions, chunks=None, chunk_tokens=None):
    """planner/plan.cpp chunk_count: a count, or ceil(positions / tokens), within [1, positions]."""
    m = 1
    if chunks is not None:
        m = chunks
    if chunk_tokens is not None:
        m = -(-positions // chunk_tokens)
    return max(1, min(m, max(positions, 1)))


def lm_head_chunks(spec, seq_len):
    """MST's LM-head chunk count (Plan::mst_reference: ceil(V / d) over the S - 1 labelled positions);
    the MLP's, ceil(S / d), is taken from the input in the patched forward."""
    d, v = spec["hidden_size"], spec["vocab_size"]
    return chunk_count(seq_len - 1, chunks=-(-v // d))


def config(model, layers, method, seq_len, batch=1, precision="bf16", attention="flash",
           in_backward=True, grad_accum=1, mlp_mode="tiled", lm_head_mode="recompute"):
    cfg = dict(model=model, layers=layers, method=method, seq_len=seq_len, batch=batch,
               precision=precision, attention=attention, optimizer_in_backward=in_backward,
               grad_accum=grad_accum)
    if method == "mst":
        cfg["mlp_mode"] = mlp_mode
        cfg["lm_head_mode"] = lm_head_mode
    return cfg


# Deep models are cut to a few layers so that long sequences fit one GPU; the planner is asked
# about the same cut model (the measurement's `layers`).
GRID_MODELS = [("llama3-8b", 4), ("qwen2-7b", 4), ("gemma2-9b", 4)]


def grid(name):
    """The configurations to measure, cheapest first within each model."""
    out = []
    if name == "smoke":
        return [config("tiny-llama", 2, m, 256) for m in ("vanilla", "recompute", "mst")]
    lengths = [1024, 4096, 16384] if name == "default" else [1024]
    for model, layers in GRID_MODELS:
        for batch in (1, 2):
            for seq in lengths:
                for method in ("vanilla", "recompute"):
                    out.append(config(model, layers, method, seq, batch))
                for mlp_mode in ("tiled", "paper"):
                    for head in ("recompute", "forward-grad"):
                        out.append(config(model, layers, "mst", seq, batch, mlp_mode=mlp_mode, lm_head_mode=head))
        if name != "default":
            continue
        # The long end, where MST matters; eager attention; the optimizer after backward; mixed
        # precision; gradient accumulation.
        for seq in (32768, 65536):
            out.append(config(model, layers, "mst", seq))
            out.append(config(model, layers, "recompute", seq))
        for seq in (1024, 4096):
            out.append(config(model, layers, "vanilla", seq, attention="eager"))
            out.append(config(model, layers, "mst", seq, attention="eager"))
        out.append(config(model, layers, "vanilla", 4096, in_backward=False))
        out.append(config(model, layers, "mst", 16384, in_backward=False))
        out.append(config(model, layers, "vanilla", 4096, precision="mixed"))
        out.append(config(model, layers, "mst", 16384, precision="mixed"))
        out.append(config(model, layers, "mst", 8192, grad_accum=2))
    return out


# The configurations whose longest sequence is found by bisection, cheapest first. The MST one
# keeps 28 of llama3-8b's 32 layers so that its longest (about 116K tokens predicted on an H100)
# costs tens of seconds per trial, not minutes.
LONGEST = [config("llama3-8b", 4, "vanilla", 0), config("qwen2-7b", 4, "vanilla", 0),
           config("llama3-8b", 4, "recompute", 0), config("gemma2-9b", 4, "recompute", 0),
           config("llama3-8b", 28, "mst", 0)]


def describe(cfg):
    extra = ""
    if cfg["method"] == "mst":
        extra = f" mlp={cfg['mlp_mode']} lm_head={cfg['lm_head_mode']}"
    return (f"{cfg['model']}/{cfg['layers']}L {cfg['method']}{extra} S={cfg['seq_len']} b={cfg['batch']} "
            f"{cfg['precision']} {cfg['attention']} opt={'bwd' if cfg['optimizer_in_backward'] else 'end'} "
            f"accum={cfg['grad_accum']}")


def measurement_entry(cfg, gpu):
    """The fields a measurement file (docs/specs.md) gives this configuration."""
    e = {"model": cfg["model"], "layers": cfg["layers"], "gpu": gpu, "method": cfg["method"],
         "profile": "pytorch", "batch": cfg["batch"], "precision": cfg["precision"],
         "attention": cfg["attention"], "optimizer_in_backward": cfg["optimizer_in_backward"],
         "grad_accum": cfg["grad_accum"]}
    if cfg["method"] == "mst":
        e["mlp"] = {"mode": cfg["mlp_mode"]}
        e["lm_head"] = {"mode": cfg["lm_head_mode"]}
    return e


# --- The model and the step (torch from here on) ---------------------------------------------


def hf_config(spec, layers, attention):
    import transformers

    family = spec["family"]
    common = dict(
        hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
        num_hidden_layers=layers, num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"], vocab_size=spec["vocab_size"],
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=spec["tie_word_embeddings"], rms_norm_eps=float(spec["norm_eps"]),
        rope_theta=float(spec["rope_theta"]), use_cache=False,
        attn_implementation="sdpa" if attention == "flash" else "eager")
    if spec.get("head_dim"):
        common["head_dim"] = spec["head_dim"]
    if spec.get("rope_scaling"):
        scaling = dict(spec["rope_scaling"])
        scaling["rope_type"] = scaling.pop("type")
        common["rope_scaling"] = scaling
    if family == "llama":
        return transformers.LlamaConfig(attention_bias=spec["attention_bias"], hidden_act="silu", **common)
    if family == "mistral":
        window = spec.get("sliding_window")
        return transformers.MistralConfig(sliding_window=window["size"] if window else None, hidden_act="silu", **common)
    if family == "qwen2":
        return transformers.Qwen2Config(hidden_act="silu", use_sliding_window=False, **common)
    if family == "gemma2":
        window = spec.get("sliding_window")
        return transformers.Gemma2Config(
            hidden_activation="gelu_pytorch_tanh", sliding_window=window["size"] if window else None,
            attn_logit_softcapping=spec.get("attn_logit_softcapping"),
            final_logit_softcapping=spec.get("final_logit_softcapping"),
            query_pre_attn_scalar=spec.get("query_pre_attn_scalar"), **common)
    raise SystemExit(f"family {family}: not supported by the harness")


def build(cfg, device):
    import torch
    import transformers

    spec = load_spec(cfg["model"])
    hf = hf_config(spec, cfg["layers"], cfg["attention"])
    dtype = torch.bfloat16 if cfg["precision"] == "bf16" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(hf, torch_dtype=dtype)
    model.train()
    return spec, model


def slices(n, m):
    """torch.tensor_split's pieces of range(n) in m parts (the planner's chunk classes)."""
    base, longer = divmod(n, m)
    out, start = [], 0
    for i in range(m):
        size = base + (1 if i < longer else 0)
        if size > 0:
            out.append(slice(start, start + size))
        start += size
    return out


def make_functions():
    import torch

    # custom_fwd/custom_bwd: backward runs under the autocast state of forward (mixed precision).
    fwd = torch.amp.custom_fwd(device_type="cuda")
    bwd = torch.amp.custom_bwd(device_type="cuda")

    class TiledMlp(torch.autograd.Function):
        """MST's tiled MLP: keeps only the input; each chunk recomputed in backward."""

        @staticmethod
        @fwd
        def forward(ctx, x, mlp, chunks, *params):
            ctx.mlp, ctx.chunks, ctx.params = mlp, chunks, params
            ctx.save_for_backward(x)
            out = None  # written chunk by chunk (its dtype is the MLP's output's: bf16 under autocast)
            with torch.no_grad():
                for sl in slices(x.shape[1], chunks):
                    y = mlp(x[:, sl])
                    if out is None:
                        out = y.new_empty(x.shape[:-1] + y.shape[-1:])
                    out[:, sl] = y
                    del y
            return out

        @staticmethod
        @bwd
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            dx = torch.empty_like(x)
            grads = [None] * len(ctx.params)
            for sl in slices(x.shape[1], ctx.chunks):
                xc = x[:, sl].detach().requires_grad_(True)
                with torch.enable_grad():
                    y = ctx.mlp(xc)
                got = torch.autograd.grad(y, (xc,) + tuple(ctx.params), g[:, sl])
                dx[:, sl] = got[0]
                for i, gp in enumerate(got[1:]):
                    grads[i] = gp if grads[i] is None else grads[i].add_(gp)
                del y, got
            return (dx, None, None, *grads)

    class ChunkedLmHeadLoss(torch.autograd.Function):
        """MST's LM head + loss over the labelled positions, chunk by chunk: mean cross-entropy of
        positions 0..S-2 against labels 1..S-1 (ignore -100), logits soft-capped when the model does."""

        @staticmethod
        @fwd
        def forward(ctx, h, weight, labels, chunks, cap, forward_grad):
            targets = labels[:, 1:]
            valid = (targets != -100).sum().clamp(min=1)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            positions = h.shape[1] - 1
            dh = torch.zeros_like(h) if forward_grad else None
            dw = None
            for sl in slices(positions, chunks):
                hc = h[:, sl]
                logits32 = (hc @ weight.t()).float()
                if cap:
                    logits32 = torch.tanh(logits32 / cap) * cap
                t = targets[:, sl]
                mask = t != -100
                lse = torch.logsumexp(logits32, dim=-1)
                picked = logits32.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                total += ((lse - picked) * mask).sum()
                if forward_grad:
                    dl, dwc = ChunkedLmHeadLoss.chunk_grad(logits32, lse, t, mask, valid, cap, hc, weight)
                    dh[:, sl] = dl @ weight
                    dw = dwc if dw is None else dw.add_(dwc)
                del logits32, lse
            ctx.chunks, ctx.cap, ctx.forward_grad = chunks, cap, forward_grad
            if forward_grad:
                ctx.save_for_backward(dh, dw)
            else:
                ctx.save_for_backward(h, weight, labels)
            return total / valid

        @staticmethod
        def chunk_grad(logits32, lse, t, mask, valid, cap, hc, weight):
            p = torch.exp(logits32 - lse.unsqueeze(-1))
            p.scatter_add_(-1, t.clamp(min=0).unsqueeze(-1), -torch.ones_like(p[..., :1]))
            p.mul_((mask.unsqueeze(-1) / valid).to(p.dtype))
            if cap:
                p.mul_(1 - (logits32 / cap) ** 2)
            dl = p.to(torch.bfloat16)  # the logits' gradient in bf16, as the planner's profile has it
            del p
            dw = dl.flatten(0, 1).t() @ hc.flatten(0, 1)
            return dl, dw

        @staticmethod
        @bwd
        def backward(ctx, g):
            if ctx.forward_grad:
                dh, dw = ctx.saved_tensors
                return dh * g, dw * g, None, None, None, None
            h, weight, labels = ctx.saved_tensors
            targets = labels[:, 1:]
            valid = (targets != -100).sum().clamp(min=1)
            dh = torch.zeros_like(h)
            dw = None
            for sl in slices(h.shape[1] - 1, ctx.chunks):
                hc = h[:, sl]
                logits32 = (hc @ weight.t()).float()
                if ctx.cap:
                    logits32 = torch.tanh(logits32 / ctx.cap) * ctx.cap
                t = targets[:, sl]
                lse = torch.logsumexp(logits32, dim=-1)
                dl, dwc = ChunkedLmHeadLoss.chunk_grad(logits32, lse, t, t != -100, valid, ctx.cap, hc, weight)
                del logits32, lse
                dh[:, sl] = dl @ weight
                dw = dwc if dw is None else dw.add_(dwc)
                del dl, dwc
            return dh * g, dw * g, None, None, None, None

    return TiledMlp, ChunkedLmHeadLoss


class Step:
    """One configuration, ready to run steps."""

    def __init__(self, cfg, device):
        import torch

        self.torch = torch
        self.cfg, self.device = cfg, device
        self.spec, self.model = build(cfg, device)
        self.tiled_mlp, self.lm_head_loss = make_functions()
        if cfg["method"] in ("recompute", "mst"):
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg["method"] == "mst":
            for layer in self.model.model.layers:
                self.patch_mlp(layer.mlp)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.micro = 0
        if cfg["optimizer_in_backward"]:
            self.optimizers = {p: torch.optim.AdamW([p], lr=1e-5, foreach=False) for p in params}

            def hook(p):
                if self.micro == cfg["grad_accum"] - 1:
                    self.optimizers[p].step()
                    p.grad = None

            for p in params:
                p.register_post_accumulate_grad_hook(hook)
            self.optimizer = None
        else:
            self.optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True)
        self.set_length(cfg["seq_len"])

    def set_length(self, seq_len):
        """Random token ids of this length for every micro-batch (labels: the same ids, shifted by the loss)."""
        torch = self.torch
        self.cfg = dict(self.cfg, seq_len=seq_len)
        self.head_chunks = lm_head_chunks(self.spec, seq_len)
        gen = torch.Generator(device="cpu").manual_seed(1)
        shape = (self.cfg["batch"], seq_len)
        self.batches = [torch.randint(0, self.spec["vocab_size"], shape, generator=gen).to(self.device)
                        for _ in range(self.cfg["grad_accum"])]

    def patch_mlp(self, mlp):
        original = mlp.forward
        params = tuple(p for p in mlp.parameters())
        step = self

        if self.cfg["mlp_mode"] == "paper":
            def forward(x):
                m = chunk_count(x.shape[1], chunk_tokens=step.spec["hidden_size"])
                return step.torch.cat([original(c) for c in step.torch.tensor_split(x, m, dim=1)], dim=1)
        else:
            def forward(x):
                m = chunk_count(x.shape[1], chunk_tokens=step.spec["hidden_size"])
                return step.tiled_mlp.apply(x, original, m, *params)
        mlp.forward = forward

    def loss(self, hidden, ids):
        model, cfg = self.model, self.cfg
        cap = self.spec.get("final_logit_softcapping")
        if cfg["method"] == "mst":
            return self.lm_head_loss.apply(hidden, model.lm_head.weight, ids, self.head_chunks, cap,
                                           cfg["lm_head_mode"] == "forward-grad")
        logits = model.lm_head(hidden)
        if cap:
            logits = self.torch.tanh(logits / cap) * cap
        return model.loss_function(logits=logits, labels=ids, vocab_size=self.spec["vocab_size"])

    def run(self):
        """One optimizer step; returns (loss, seconds, phase peaks allocated, phase peaks reserved)."""
        torch = self.torch
        cuda = self.device.startswith("cuda")
        peaks, reserved = {"forward": 0, "loss": 0, "backward": 0, "optimizer": 0}, {}

        def mark(phase):
            if cuda:
                torch.cuda.synchronize()
                peaks[phase] = max(peaks[phase], torch.cuda.max_memory_allocated())
                reserved[phase] = max(reserved.get(phase, 0), torch.cuda.max_memory_reserved())
                torch.cuda.reset_peak_memory_stats()

        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        total = 0.0
        autocast = self.cfg["precision"] == "mixed"
        for micro, ids in enumerate(self.batches):
            self.micro = micro
            with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
                hidden = self.model.model(input_ids=ids).last_hidden_state
                mark("forward")
                hidden.register_hook(lambda g: mark("loss"))
                loss = self.loss(hidden, ids) / len(self.batches)
            del hidden
            loss.backward()
            mark("backward")
            total += float(loss)
            del loss
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            mark("optimizer")
        if cuda:
            torch.cuda.synchronize()
        return total, time.perf_counter() - start, peaks, reserved


def loss_and_grads(cfg, device):
    """Loss and every parameter's gradient of one forward and backward (no optimizer step)."""
    step = Step(dict(cfg, optimizer_in_backward=False), device)
    ids = step.batches[0]
    hidden = step.model.model(input_ids=ids).last_hidden_state
    loss = step.loss(hidden, ids)
    loss.backward()
    return float(loss), {n: p.grad.detach().float().clone() for n, p in step.model.named_parameters() if p.grad is not None}


def check_equivalence(device):
    """MST's chunked MLP and LM head (both modes of each) give plain autograd's loss and gradients,
    in fp32, for a llama- and a gemma-shaped tiny model (soft-capped logits, tied embeddings).
    Raises SystemExit naming the first difference beyond 1e-4 (relative to the largest entry)."""
    lines = []
    for model in ("tiny-llama", "tiny-gemma2"):
        base = config(model, 2, "vanilla", 257, batch=2, precision="fp32")
        loss0, grads0 = loss_and_grads(base, device)
        for mlp_mode in ("paper", "tiled"):
            for head in ("recompute", "forward-grad"):
                cfg = config(model, 2, "mst", 257, batch=2, precision="fp32", mlp_mode=mlp_mode, lm_head_mode=head)
                loss, grads = loss_and_grads(cfg, device)
                worst, where = abs(loss - loss0) / abs(loss0), "loss"
                if set(grads) != set(grads0):
                    raise SystemExit(f"{describe(cfg)}: gradients for {sorted(set(grads) ^ set(grads0))} differ in presence")
                for name, g0 in grads0.items():
                    err = float((grads[name] - g0).abs().max() / g0.abs().max().clamp(min=1e-30))
                    if err > worst:
                        worst, where = err, name
                if worst > 1e-4:
                    raise SystemExit(f"{describe(cfg)}: differs from plain autograd by {worst:.2e} in {where}")
                lines.append(f"{describe(cfg)}: loss {loss:.6f} (plain {loss0:.6f}), largest difference {worst:.1e} ({where})")
    return lines


def environment(device):
    import torch
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, total_bytes=props.total_memory, cuda=torch.version.cuda,
                   capability=f"{props.major}.{props.minor}")
        try:
            import subprocess
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001 - the driver version is informative only
            env["driver"] = "unknown"
    return env


def measure(cfg, device, steps=2):
    """Runs `steps` optimizer steps (the first creates the optimizer state) and measures the last."""
    import torch

    step = Step(cfg, device)
    try:
        for _ in range(steps):
            loss, seconds, peaks, reserved = step.run()
    finally:
        del step
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return dict(loss=loss, step_seconds=seconds, phase_peak_allocated_bytes=peaks,
                peak_allocated_bytes=max(peaks.values()), peak_reserved_bytes=max(reserved.values(), default=0))


def longest(cfg, device, granularity, predicted, deadline):
    """The longest multiple of `granularity` whose step runs: (fits, does not fit), or None where
    the time ran out first. One model and optimizer for every trial (a warm-up step at 1,024
    tokens creates the optimizer state), one step per trial. With the planner's prediction the
    first trials bracket it at -3% and +3% (the bound), so two trials can settle the question;
    without it, doubling from 4,096 tokens. Then bisection while time remains."""
    import torch

    step = Step(dict(cfg, seq_len=1024), device)
    step.run()

    def fits(s):
        ok = False
        step.set_length(s)
        try:
            step.run()
            ok = True
        except torch.cuda.OutOfMemoryError:
            pass  # the traceback holds the step's tensors: free them outside the handler
        # A step cut short leaves gradients the in-backward optimizer never consumed.
        step.model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        return ok

    down = lambda x: max(granularity, int(x) // granularity * granularity)  # noqa: E731
    up = lambda x: -(-int(x) // granularity) * granularity  # noqa: E731
    lo, hi = 0, None
    try:
        if predicted:
            a, b = down(predicted * 0.97), up(predicted * 1.03)
            if fits(a):
                lo = a
                while hi is None and time.time() < deadline:
                    if fits(b):
                        lo, b = b, up(b * 1.1)
                    else:
                        hi = b
            else:
                hi = a
                while lo == 0 and a > granularity and time.time() < deadline:
                    a = down(a * 0.9)
                    if fits(a):
                        lo = a
                    else:
                        hi = a
        else:
            s = 4096
            while hi is None and time.time() < deadline:
                if fits(s):
                    lo, s = s, s * 2
                else:
                    hi = s
        while hi is not None and hi - lo > granularity and time.time() < deadline:
            mid = down((lo + hi) // 2)
            if mid <= lo:
                break
            if fits(mid):
                lo = mid
            else:
                hi = mid
    finally:
        del step
        gc.collect()
        torch.cuda.empty_cache()
    return lo, hi


def planner_predictions(mst_plan, gpu, out_dir):
    """The planner's longest sequence for each bisection (mst-plan fidelity on this grid), or {}."""
    if not mst_plan:
        return {}
    import subprocess

    listing = os.path.join(out_dir, "longest-listing.json")
    entries = [measurement_entry(cfg, gpu) | {"longest_seq_len": 1024, "granularity": 1024} for cfg in LONGEST]
    write_json(listing, {"source": "harness.py: the bisections to predict", "longest": entries})
    run = subprocess.run([mst_plan, "fidelity", "--no-builtin", "--measured", listing, "--json"],
                         capture_output=True, text=True, timeout=300)
    try:
        rows = json.loads(run.stdout)["longest"]
    except (ValueError, KeyError):
        print(f"mst-plan fidelity gave no predictions: {run.stderr.strip()}", file=sys.stderr)
        return {}
    return {i: row["predicted"] for i, row in enumerate(rows)}


def write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", help="the catalog name of this GPU (mst-plan gpus), e.g. H100-80G")
    ap.add_argument("--out", default="gpu-out/pytorch", help="folder for measured.json, raw.jsonl and the log")
    ap.add_argument("--grid", default="default", choices=["default", "quick", "smoke"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--minutes", type=float, default=12.0, help="stop starting new configurations after this")
    ap.add_argument("--no-longest", action="store_true", help="skip the bisections")
    ap.add_argument("--mst-plan", help="the mst-plan binary: its predictions bracket the bisections (fewer trials)")
    ap.add_argument("--list", action="store_true", help="print the grid and exit (no torch needed)")
    ap.add_argument("--smoke", action="store_true", help="run the smoke grid once, print losses, write nothing")
    args = ap.parse_args()

    configs = grid("smoke" if args.smoke else args.grid)
    if args.list:
        # As a measurement file with a 1-byte peak per entry: not measurements, but what the planner
        # must be able to read (the test `pytorch_harness_grid_is_planable` feeds it to mst-plan fidelity).
        entries = [measurement_entry(cfg, args.gpu or "H100-80G") | {"seq_len": cfg["seq_len"], "peak_allocated_bytes": 1}
                   for cfg in configs]
        longest = [measurement_entry(cfg, args.gpu or "H100-80G") | {"longest_seq_len": 1024, "granularity": 1024}
                   for cfg in LONGEST]
        print(json.dumps({"source": "harness.py --list: the grid, not measurements", "measurements": entries,
                          "longest": longest}, indent=1))
        print(f"{len(configs)} configurations, {len(longest)} bisections", file=sys.stderr)
        return 0
    if args.smoke:
        for line in check_equivalence(args.device):
            print(line)
        for cfg in configs:
            r = measure(cfg, args.device)
            print(f"{describe(cfg)}: loss {r['loss']:.4f}, {r['step_seconds']:.2f} s")
        return 0
    if not args.gpu:
        ap.error("--gpu is required to measure (the catalog name the planner predicts for)")

    os.makedirs(args.out, exist_ok=True)
    deadline = time.time() + 60 * args.minutes
    env = environment(args.device)
    result = {"source": f"scripts/pytorch/harness.py, transformers {env['transformers']}, torch {env['torch']}",
              "environment": ", ".join(f"{k} {v}" for k, v in env.items()),
              "measurements": []}
    out_file = os.path.join(args.out, "measured.json")
    log = open(os.path.join(args.out, "harness.log"), "a", encoding="utf-8")
    raw = open(os.path.join(args.out, "raw.jsonl"), "a", encoding="utf-8")

    def say(text):
        line = f"{datetime.datetime.now().isoformat(timespec='seconds')} {text}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    import torch

    for i, cfg in enumerate(configs):
        if time.time() > deadline:
            say(f"time is up: {len(configs) - i} configurations not run")
            break
        r, error = None, None
        try:
            r = measure(cfg, args.device)
        except torch.cuda.OutOfMemoryError:
            error = "out of memory"  # the traceback holds the step's tensors: free them outside the handler
        except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the run
            error = f"failed: {type(e).__name__}: {e}"
            traceback.print_exc(file=log)
        if r is None:
            gc.collect()
            torch.cuda.empty_cache()
            say(f"[{i + 1}/{len(configs)}] {describe(cfg)}: {error}")
            raw.write(json.dumps({"config": cfg, "error": error}) + "\n")
            raw.flush()
            continue
        entry = measurement_entry(cfg, args.gpu) | {"seq_len": cfg["seq_len"]}
        entry.update(peak_allocated_bytes=r["peak_allocated_bytes"], peak_reserved_bytes=r["peak_reserved_bytes"],
                     step_seconds=round(r["step_seconds"], 4), loss=round(r["loss"], 5),
                     phase_peak_allocated_bytes=r["phase_peak_allocated_bytes"])
        result["measurements"].append(entry)
        raw.write(json.dumps({"config": cfg, "result": r}) + "\n")
        raw.flush()
        write_json(out_file, result)  # after every configuration: a cut-off run keeps what it measured
        say(f"[{i + 1}/{len(configs)}] {describe(cfg)}: peak {r['peak_allocated_bytes']:,} B allocated, "
            f"{r['peak_reserved_bytes']:,} reserved, {r['step_seconds']:.2f} s, loss {r['loss']:.4f}")

    if not args.no_longest:
        result["longest"] = []
        predicted = planner_predictions(args.mst_plan, args.gpu, args.out)
        for i, cfg in enumerate(LONGEST):
            if time.time() > deadline:
                say(f"time is up: {len(LONGEST) - i} bisections not run")
                break
            try:
                lo, hi = longest(cfg, args.device, 1024, predicted.get(i), deadline)
            except Exception as e:  # noqa: BLE001 - one failing bisection must not lose the run
                traceback.print_exc(file=log)
                say(f"longest {describe(cfg)}: failed: {type(e).__name__}: {e}")
                continue
            raw.write(json.dumps({"config": cfg, "longest": [lo, hi], "predicted": predicted.get(i)}) + "\n")
            raw.flush()
            if hi is None or hi - lo > 1024:
                say(f"longest {describe(cfg)}: not settled: {lo:,} tokens run, {hi} did not "
                    f"(planner: {predicted.get(i)})")
                continue
            entry = measurement_entry(cfg, args.gpu) | {"longest_seq_len": lo, "granularity": 1024}
            result["longest"].append(entry)
            write_json(out_file, result)
            say(f"longest {describe(cfg)}: {lo:,} tokens (planner: {predicted.get(i)})")
    write_json(out_file, result)
    say(f"wrote {out_file}: {len(result['measurements'])} measurements, {len(result.get('longest', []))} longest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
