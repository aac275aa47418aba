#!/usr/bin/env python3
"""benchmarks/gpt/pytorch_gpt2.py — the PyTorch twin of gpt2_step: the same GPT-2 training step, timed the same way.

Model:    pre-LayerNorm GPT-2 as examples/05_train_gpt builds it: token and learned position embeddings, blocks of
          x + proj(attn(ln_1(x))) and x + fc2(gelu_tanh(fc(ln_2(x)))) with biases, ln_f, and an LM head tied to the
          token table. Attention is F.scaled_dot_product_attention(is_causal=True) (a plain masked softmax where this
          torch has none, e.g. torch 1.13). Init as parallax: Normal(0, 0.02), the residual projections
          0.02 / sqrt(2 layers), zero biases. Activations are batch-first here, sequence-first in parallax: the same
          math.
Step:     forward, backward (gradients accumulated over --microbatches), clip_grad_norm_(1.0), AdamW (lr 6e-4,
          betas (0.9, 0.95), eps 1e-8, weight_decay 0.1 on every parameter, as parallax; fused when this torch has it),
          zero_grad. Random tokens and targets with a fixed seed, the same batch every step.
Precision: bf16 is autocast to bfloat16 with fp32 weights (fp32 master weights, as parallax keeps in its optimizer;
          parallax also stores the weights, gradients and activations in bf16). fp32 is plain fp32 with TF32 off
          (parallax's fp32 GEMMs are full fp32 too).
Modes:    eager, and compile (torch.compile of the model; reported as unavailable, not failed, when this torch has no
          torch.compile or it fails here). Each mode builds a fresh model from the same seed.
Timing:   ms/step is the median of the timed steps after --warmup-steps untimed ones (compilation happens there), each
          step ending with loss.item() and torch.cuda.synchronize(). FLOPs per token 6N + 6 L d T (N every parameter
          once), MFU against the device's dense bf16 peak (989 TFLOP/s for H100 SXM and H200) on CUDA, against a
          measured fp32 matmul rate on the CPU; --peak-tflops overrides.

  pytorch_gpt2.py [--layers L] [--dim D] [--heads H] [--seq T] [--vocab V] [--batch B] [--microbatches M]
                  [--steps S] [--warmup-steps W] [--precision fp32|bf16] [--lr X] [--peak-tflops X]
                  [--mode eager,compile] [--device cuda|cpu] [--threads N] [--json FILE]

Defaults: GPT-2 124M (12 layers, dim 768, 12 heads, seq 1024, vocab 50304, batch 16, 10 steps after 3) on CUDA; a tiny
model (2 layers, dim 64, 4 heads, seq 64, vocab 512, batch 4, 3 steps after 1) on one CPU thread.
"""
import argparse
import inspect
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(Dh), causal) v over [B, H, T, Dh]."""
    if HAS_SDPA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(dim=-1) @ v


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.fc = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = causal_attention(q, k, v).transpose(1, 2).contiguous().view(b, t, d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.wte = nn.Embedding(a.vocab, a.dim)
        self.wpe = nn.Embedding(a.seq, a.dim)
        self.blocks = nn.ModuleList(Block(a.dim, a.heads) for _ in range(a.layers))
        self.ln_f = nn.LayerNorm(a.dim, eps=1e-5)
        self.register_buffer("positions", torch.arange(a.seq), persistent=False)
        residual_std = 0.02 / math.sqrt(2 * a.layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, residual_std if name.endswith(("proj.weight", "fc2.weight")) else 0.02)

    def forward(self, tokens, targets):
        x = self.wte(tokens) + self.wpe(self.positions[: tokens.shape[1]])
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # the head tied to the token table
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def parse(argv):
    p = argparse.ArgumentParser(description="PyTorch twin of bench_gpt_gpt2_step: one GPT-2 training step")
    for flag in ("layers", "dim", "heads", "seq", "vocab", "batch", "steps"):
        p.add_argument(f"--{flag}", type=int)
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, dest="warmup")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--peak-tflops", type=float, default=0.0)
    p.add_argument("--mode", default="eager,compile", help="comma-separated: eager, compile")
    p.add_argument("--device", choices=("cuda", "cpu"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads (CPU only; default 1, as one host rank)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    cuda = a.device == "cuda"
    defaults = dict(layers=12, dim=768, heads=12, seq=1024, vocab=50304, batch=16, steps=10, warmup=3) if cuda else \
        dict(layers=2, dim=64, heads=4, seq=64, vocab=512, batch=4, steps=3, warmup=1)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.modes = [m for m in a.mode.split(",") if m]
    for m in a.modes:
        if m not in ("eager", "compile"):
            p.error(f"--mode {m}: not eager or compile")
    for k in ("layers", "dim", "heads", "seq", "vocab", "batch", "steps", "microbatches"):
        if getattr(a, k) <= 0:
            p.error(f"--{k} {getattr(a, k)}: expected a positive integer")
    if a.warmup < 0:
        p.error(f"--warmup-steps {a.warmup}: expected zero or more")
    if a.dim % a.heads:
        p.error(f"--dim {a.dim} is not divisible by {a.heads} heads")
    if a.batch % a.microbatches:
        p.error(f"--batch {a.batch} does not split into --microbatches {a.microbatches}")
    return a


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_info(a, device):
    """(name, dense bf16 peak in TFLOP/s or 0 when unknown)."""
    if device.type != "cuda":
        return "host CPU, {} thread{}".format(torch.get_num_threads(), "" if torch.get_num_threads() == 1 else "s"), 0
    name = torch.cuda.get_device_name(device)
    peak = 0  # dense bf16 datasheet peaks: SXM parts, unless PCIe or NVL is named
    if "H100" in name or "H200" in name:
        peak = 756 if "PCIe" in name else 835 if "NVL" in name else 989
    elif "A100" in name:
        peak = 312
    return name, peak


def matmul_rate(device, dtype, n):
    """FLOP/s of a square n x n x n matmul on random data: best of 5 after a warm-up."""
    x = torch.randn(n, n, device=device, dtype=dtype)
    y = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for k in range(6):
        sync(device)
        t0 = time.perf_counter()
        torch.matmul(x, y)
        sync(device)
        s = time.perf_counter() - t0
        if k > 0:
            best = max(best, 2.0 * n ** 3 / s)
    return best


def make_optimizer(params, a, device):
    kw = dict(lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    accepted = inspect.signature(torch.optim.AdamW).parameters
    if device.type == "cuda" and "fused" in accepted:
        try:
            return torch.optim.AdamW(params, fused=True, **kw), "AdamW (fused)"
        except (RuntimeError, TypeError, ValueError):
            pass
    if "foreach" in accepted:
        return torch.optim.AdamW(params, foreach=True, **kw), "AdamW (foreach)"
    return torch.optim.AdamW(params, **kw), "AdamW"


def run_mode(mode, a, device, batches, flops_per_token, peak):
    """Warm-up and timed steps of one mode; its figures as a dict."""
    torch.manual_seed(1)
    model = GPT(a).to(device)
    opt, opt_name = make_optimizer(model.parameters(), a, device)
    step_model = model
    if mode == "compile":
        if not hasattr(torch, "compile"):
            return {"mode": mode, "available": False, "reason": f"torch {torch.__version__} has no torch.compile"}
        step_model = torch.compile(model)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        total = 0.0
        for tokens, targets in batches:
            with autocast:
                loss = step_model(tokens, targets) / len(batches)
            loss.backward()
            total = total + loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total.item()

    seconds, losses = [], []
    try:
        for i in range(a.warmup + a.steps):
            sync(device)
            t0 = time.perf_counter()
            losses.append(step())
            sync(device)
            s = time.perf_counter() - t0
            if i >= a.warmup:
                seconds.append(s)
            elif i == 0:
                first_step_s = s
    except Exception as e:  # torch.compile failing on this machine (no compiler, backend error) is reported
        if mode != "compile":
            raise
        return {"mode": mode, "available": False, "reason": f"{type(e).__name__}: {str(e).strip()[:400]}"}
    step_s = statistics.median(seconds)
    tokens_per_s = a.batch * a.seq / step_s
    tflops = flops_per_token * tokens_per_s / 1e12
    r = {"mode": mode, "available": True, "step_ms": step_s * 1e3, "step_ms_all": [s * 1e3 for s in seconds],
         "tokens_per_s": tokens_per_s, "tflops": tflops, "mfu": tflops * 1e12 / peak,
         "first_step_s": first_step_s if a.warmup > 0 else None, "loss_first": losses[0], "loss_last": losses[-1],
         "optimizer": opt_name,
         "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
    del step_model, model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return r


def main(argv):
    a = parse(argv)
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    name, datasheet_peak = device_info(a, device)
    gemm_dtype = torch.bfloat16 if device.type == "cuda" and a.precision == "bf16" else torch.float32
    gemm = matmul_rate(device, gemm_dtype, 8192 if device.type == "cuda" else 256)
    if a.peak_tflops > 0:
        peak, peak_source = a.peak_tflops * 1e12, "--peak-tflops"
    elif datasheet_peak > 0:
        peak, peak_source = datasheet_peak * 1e12, "datasheet dense bf16 peak of the device"
    else:
        peak, peak_source = gemm, "measured matmul rate ({})".format(str(gemm_dtype).replace("torch.", ""))

    g = torch.Generator().manual_seed(1234)
    rows = a.batch // a.microbatches
    batches = [tuple(torch.randint(0, a.vocab, (rows, a.seq), generator=g).to(device) for _ in range(2))
               for _ in range(a.microbatches)]
    parameters = sum(p.numel() for p in GPT(a).parameters())  # the tied table once
    flops_per_token = 6 * parameters + 6 * a.layers * a.dim * a.seq

    print(f"PyTorch {torch.__version__} GPT-2 training step: {name}, {a.precision}"
          f"{' (autocast, fp32 weights)' if a.precision == 'bf16' else ''}, attention "
          f"{'scaled_dot_product_attention' if HAS_SDPA else 'masked softmax (no SDPA in this torch)'}")
    print(f"model: {a.layers} layers, dim {a.dim}, {a.heads} heads, seq {a.seq}, vocab {a.vocab}; batch {a.batch} x "
          f"{a.microbatches} microbatch{'es' if a.microbatches > 1 else ''}; {a.steps} timed steps after {a.warmup} "
          f"warm-up; N = {parameters / 1e6:.2f} M")
    print(f"limits: matmul {gemm / 1e12:.2f} TFLOP/s; MFU peak {peak / 1e12:.1f} TFLOP/s ({peak_source})")
    sys.stdout.flush()

    runs = []
    for mode in a.modes:
        r = run_mode(mode, a, device, batches, flops_per_token, peak)
        runs.append(r)
        if r["available"]:
            mem = f", peak {r['peak_memory_bytes'] / 2**20:.0f} MiB" if r["peak_memory_bytes"] is not None else ""
            print(f"{mode:>8}: {r['step_ms']:.2f} ms/step, {r['tokens_per_s']:.0f} tokens/s, {r['tflops']:.2f} "
                  f"TFLOP/s, MFU {100 * r['mfu']:.1f}%, loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}{mem} "
                  f"[{r['optimizer']}]")
        else:
            print(f"{mode:>8}: unavailable ({r['reason']})")
        sys.stdout.flush()

    result = {
        "benchmark": "pytorch_gpt2", "torch": torch.__version__, "device": name, "precision": a.precision,
        "autocast": a.precision == "bf16",
        "attention": "scaled_dot_product_attention" if HAS_SDPA else "masked softmax",
        "config": {"layers": a.layers, "dim": a.dim, "heads": a.heads, "seq": a.seq, "vocab": a.vocab,
                   "batch": a.batch, "microbatches": a.microbatches, "steps": a.steps, "warmup_steps": a.warmup,
                   "optimizer": f"AdamW lr {a.lr} betas (0.9, 0.95) eps 1e-8 weight_decay 0.1, clip 1.0"},
        "parameters": parameters, "flops_per_token": flops_per_token, "gemm_tflops": gemm / 1e12,
        "peak_tflops": peak / 1e12, "peak_source": peak_source, "runs": runs,
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    print(json.dumps({"benchmark": "pytorch_gpt2", "figure": "training step", **{
        r["mode"]: (r["tokens_per_s"] if r["available"] else None) for r in runs}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
