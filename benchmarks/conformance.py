"""Which SOAP is which (issue 24): public SOAP implementations measured against the reference (nikhilvyas/SOAP).

For every implementation, at the keyword mapping closest to the reference's: the behaviour probes of
``benchmarks/conformance_probes.py`` and the distance from the reference's golden trajectories (both commits, calls
1, 10 and 32 of each configuration). Raw results go to ``data/conformance/probes.json``; ``docs/conformance.md`` is
rendered from it (and from the training results, when present). NVIDIA's ``emerging-optimizers`` needs Python ≥
3.12: it runs as a worker under ``--py312`` (an interpreter with torch and emerging-optimizers==0.3.0); without
one, the page says why.

    python benchmarks/conformance.py                        # probes + golden distances, JSON and page (make conformance)
    python benchmarks/conformance.py --py312 /work/venv312/bin/python
    python benchmarks/conformance.py --render               # the page again from the stored JSON
    python benchmarks/conformance.py --train                # 1000 steps of cpu_freq, seed 0, per implementation
    python benchmarks/conformance.py --train --impls heavyball --steps 20 --out /tmp/x   # a smoke run elsewhere

Training (``--train``) goes through ``soap_lab.train.train`` unchanged: the config is the cpu_freq study's SOAP run
(seed 0, f = 10, the tuned lr), and its ``optimizer_factory`` hook builds, instead of the lab's registry,
one that builds the implementation from the reference keywords (:func:`external_optimizer`). Results go to
``data/conformance/train_<impl>.json`` with provenance; the page is rendered again afterwards. NVIDIA's run goes
through the same harness in the ``--py312`` interpreter, which then also needs numpy and tqdm (the lab's imports);
its SOAP rejects 1-D parameters, which get ``torch.optim.AdamW`` with the same hyperparameters.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch  # noqa: E402

import conformance_probes as cp  # noqa: E402

GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "soap_reference_trajectories.pt"
OUT = ROOT / "data" / "conformance"
PAGE = ROOT / "docs" / "conformance.md"
#: Implementations run in this interpreter; NVIDIA's runs as a worker (Python >= 3.12).
IN_PROCESS = ("soap_lab_eigenbasis", "soap_lab_original", "pytorch_optimizer", "heavyball", "heavyball_HeavySOAP")
WORKER = ("nvidia_emerging",)
ALL = IN_PROCESS + WORKER
#: Columns of the page: the reference at each golden commit is soap_lab.SOAP in the matching mode on the probes.
REFERENCE = {"a1e5535": "soap_lab_eigenbasis", "bbce86e": "soap_lab_original"}
NOISE = 2.2e-5  # the golden data's spread of the reference itself across arithmetic settings
TOL = 1e-4  # a faithful implementation matches either commit to this at every call (golden README)


# ============================================================================================ collect
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tail(text: str, n: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def run_worker(name: str, python: str, golden: Path, timeout: int = 1800) -> Dict[str, Any]:
    """``conformance_probes.py --worker name`` under ``python``; on failure, the result says exactly why."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res.json"
        cmd = [python, str(ROOT / "benchmarks" / "conformance_probes.py"), "--worker", name, "--golden", str(golden),
               "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except (OSError, subprocess.SubprocessError) as e:
            return {"impl": name, "unavailable": f"could not run {python}: {type(e).__name__}: {e}"}
        if proc.returncode != 0 or not out.exists():
            return {"impl": name, "unavailable": f"worker under {python} exited {proc.returncode}: "
                                                 f"{_tail(proc.stderr or proc.stdout)}"}
        res = json.loads(out.read_text())
        shown = [str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT)) else c for c in cmd[1:-1]]
        res["worker"] = {"python": python, "command": " ".join(shown + ["<tmp>/res.json"])}
        return res


def local_attempt(dist: str, version: str, module: str) -> Dict[str, str]:
    """Why ``dist`` is not importable here: the import error, and what pip says about installing it here."""
    out = {"interpreter": f"Python {sys.version.split()[0]} ({sys.executable})"}
    try:
        __import__(module)
        out["import"] = "ok"
        return out
    except Exception as e:
        out["import"] = f"{type(e).__name__}: {e}"
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                               f"{dist}=={version}"], capture_output=True, text=True, timeout=300)
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("ERROR")]
        out["pip"] = " ".join(lines) if lines else _tail(proc.stdout, 2)
    except (OSError, subprocess.SubprocessError) as e:
        out["pip"] = f"could not ask pip: {type(e).__name__}: {e}"
    return out


def collect(impls: Sequence[str], golden: Path, py312: Optional[str]) -> Dict[str, Any]:
    from soap_lab.records.provenance import provenance

    torch.set_num_threads(1)
    registry = cp.implementations()
    res: Dict[str, Any] = {}
    t0 = time.perf_counter()
    for name in impls:
        t = time.perf_counter()
        if name in WORKER:
            attempt = local_attempt("emerging-optimizers", "0.3.0", "emerging_optimizers")
            if py312:
                res[name] = run_worker(name, py312, golden)
            else:
                res[name] = {"impl": name, "unavailable": "no Python >= 3.12 interpreter given (--py312 or "
                                                          "CONFORMANCE_PY312)"}
            res[name]["local_attempt"] = attempt
            res[name].setdefault("label", registry[name].label)
            res[name].setdefault("package", registry[name].dist)
            res[name].setdefault("rules", registry[name].RULES)
            res[name].setdefault("extras", {k: repr(v) for k, v in registry[name].EXTRAS.items()})
        else:
            res[name] = cp.run_impl(registry[name], str(golden))
        res[name]["wall_s"] = round(time.perf_counter() - t, 1)
        print(f"{name}: {res[name].get('unavailable', 'done')} ({res[name]['wall_s']} s)", file=sys.stderr, flush=True)
    return {"schema": 1, "golden": {"file": str(golden.relative_to(ROOT)) if golden.is_relative_to(ROOT) else str(golden),
                                    "sha256": _sha256(golden)},
            "reference_columns": REFERENCE, "impls": res,
            "provenance": {**provenance(), "wall_s": round(time.perf_counter() - t0)}}


# ============================================================================================ render
#: (row label, probe, key in the probe's result)
ROWS = (
    ("First call", "first_call", "value"),
    ("Current gradient enters the factors", "factor_order", "value"),
    ("ε", "eps", "value"),
    ("Weight decay: when", "weight_decay", "order"),
    ("Weight decay: how much", "weight_decay", "scale"),
    ("β2 of V", "beta2", "value"),
    ("Momentum is stored in", "momentum", "storage"),
    ("Momentum at a basis change", "momentum", "value"),
    ("V at a refresh", "v_refresh", "value"),
    ("1-D parameters (precondition_1d=False)", "one_d", "value"),
    ("Dimensions > max_precond_dim", "max_dim", "value"),
    ("merge_dims, (4, 3, 3, 2) with max_precond_dim 12", "merge_dims", "value"),
    ("shampoo_beta when not given", "shampoo_beta_default", "value"),
    ("Basis refresh", "refresh", "value"),
    ("Refresh schedule (f = 2, gradient changes at call 4)", "refresh", "schedule"),
)

PROBE_TEXT = {
    "first_call": "8×8 weight, 3 well-posed gradients: the relative change after call 1.",
    "factor_order": "β1 = β2 = 0, shampoo_beta = 0, ε = 1e-3: an update is D = Q s(QᵀGQ) Qᵀ, s(x) = x/(|x|+ε); at the "
                    "first call that moves, D is matched against the eigenbasis of that call's own gradient "
                    "('before'), of the previous call's ('after'), and one QR step between them.",
    "eps": "diagonal gradient (every basis an exact signed permutation: elementwise Adam), ε = 0.1, |g| from 1 to 0.02: "
           "the first update against g/(|g| + ε/√(1−β2)), g/(|g| + ε) and g/max(|g|, ε).",
    "weight_decay": "diagonal gradient, η = wd = 0.5, W₀ = 2 on the diagonal and 1 off it: the first update against "
                    "the four orders (after/before × η·wd/wd), which give 1.125/1.0/0.75/0.5 on the diagonal.",
    "beta2": "diagonal gradients, β1 = 0, β2 = 0.9: β2 solved from the second update.",
    "momentum": "ε = 1000 ≫ √V, so the update is ≈ Q(M'/ε)Qᵀ: parallel to the original-space momentum M whatever the "
                "basis iff M' follows the basis; the gradients change frame at call 5 (shampoo_beta = 0, f = 2). "
                "Storage: a state tensor parallel to M.",
    "v_refresh": "diagonal gradients whose magnitudes reverse order at call 4 (shampoo_beta = 0, β1 = 0, f = 2): the "
                 "refresh permutes the basis; exactly elementwise Adam iff V's slots follow.",
    "one_d": "a length-8 vector, constant gradient, β1 = β2 = 0: elementwise s(g) (AdamW) vs ≈ g/‖g‖ (rotated).",
    "max_dim": "(4, 12) and (12, 4), max_precond_dim 8, constant gradient: which sides are rotated (I identity, R "
               "rotated), read off the update.",
    "merge_dims": "constant (4, 3, 3, 2) gradient, max_precond_dim 12: the update matched against every merge of "
                  "consecutive dimensions.",
    "shampoo_beta_default": "betas (0.9, 0.8), shampoo_beta not given: the trajectory that is identical among "
                            "shampoo_beta = 0.8 (β2), 0.95, 0.99, 0.9 (β1).",
    "refresh": "gradient A for calls 1-3, B from call 4, shampoo_beta = 0, β1 = β2 = 0, f = 2: the basis of each "
               "update matched against A's eigenbasis, k QR power steps towards B from the sorted (qr k) or unsorted "
               "basis, and B's eigenbasis (eigh).",
}


def _cell(res: Dict[str, Any], probe: str, key: str) -> str:
    if "unavailable" in res:
        return "not run"
    r = res.get("probes", {}).get(probe)
    if r is None:
        return "not run"
    if r.get("value") in ("rejected", "error"):
        return f"{r['value']}: {r.get('error', '')}"
    return str(r.get(key, r.get("value")))


def _label(name: str, res: Dict[str, Any]) -> str:
    return {"soap_lab_eigenbasis": "soap_lab eigenbasis", "soap_lab_original": "soap_lab original",
            "pytorch_optimizer": "pytorch_optimizer", "heavyball": "heavyball.SOAP",
            "heavyball_HeavySOAP": "heavyball.HeavySOAP", "nvidia_emerging": "NVIDIA emerging"}.get(name, name)


def _esc(s: str) -> str:
    return s.replace("|", "\\|")


def render(data: Dict[str, Any], train: Optional[Dict[str, Any]] = None) -> str:
    impls = data["impls"]
    ref_names = list(REFERENCE.values())
    others = [n for n in impls if n not in ref_names]
    lines: List[str] = []
    add = lines.append
    add("# Which SOAP is which")
    add("")
    add("Public SOAP implementations measured against the reference (`soap.py` of github.com/nikhilvyas/SOAP; paper: "
        "Vyas et al. 2024) — issue 24. Generated by `make conformance` (`benchmarks/conformance.py`) from "
        "`data/conformance/probes.json`; do not edit by hand (`tests/test_conformance.py` fails when this page is "
        "stale).")
    add("")
    add("**The reference's columns.** On the golden problems the reference is its own trajectories at two commits "
        "(`tests/fixtures/golden`: a1e5535 = HEAD, momentum stored rotated; bbce86e = paper era, momentum in the "
        "original space). On the probes — problems the golden data do not cover — the reference's column is "
        "`soap_lab.SOAP` in the mode matching each commit (`momentum_space='eigenbasis'` for a1e5535, `'original'` "
        "for bbce86e), which reproduces both commits on every golden configuration (table below).")
    add("")
    add("Every cell is measured by a probe: a small deterministic problem whose answer differs by one behaviour, "
        "run on the optimizer as a black box (`benchmarks/conformance_probes.py`; each probe's problem is described "
        "under the table). **≠** marks a cell that differs from both reference columns.")
    add("")
    # ---------------------------------------------------------------- probe table
    heads = [f"reference a1e5535 (= {_label(REFERENCE['a1e5535'], {})})",
             f"reference bbce86e (= {_label(REFERENCE['bbce86e'], {})})"] + [_label(n, impls[n]) for n in others]
    add("| behaviour | " + " | ".join(heads) + " |")
    add("|---|" + "---|" * len(heads))
    for label, probe, key in ROWS:
        refs = [_cell(impls[n], probe, key) for n in ref_names]
        cells = [_esc(c) for c in refs]
        for n in others:
            c = _cell(impls[n], probe, key)
            mark = "" if c in refs or c == "not run" else "**≠** "
            cells.append(mark + _esc(c))
        add(f"| {label} | " + " | ".join(cells) + " |")
    add("")
    add("How each row is measured (η = 0.01, weight decay 0 and float32 unless said; \"call k\" counts `step()` calls "
        "from 1):")
    add("")
    seen = []
    for label, probe, _ in ROWS:
        if probe in seen:
            continue
        seen.append(probe)
        add(f"- `{probe}`: {PROBE_TEXT[probe]}")
    add("")
    add("The numbers behind every cell (distances to each candidate answer, fitted values) are in "
        "`data/conformance/probes.json`; a cell is an answer only if its candidate is within the probe's tolerance "
        "and the next one is at least 3-100× farther (otherwise it reads \"unclassified\").")
    add("")
    # ---------------------------------------------------------------- golden distances
    add("## Distance from the reference's trajectories")
    add("")
    add("Relative distance ‖w − w_ref‖/‖w_ref‖ (worst parameter, float32) from the reference at commit a1e5535 after "
        f"calls 1 · 10 · 32 of each golden configuration. Noise floor: the reference itself moves by up to {NOISE:.1e} "
        f"across arithmetic settings; a faithful implementation stays below {TOL:.0e} at every call. **≠** marks a "
        f"distance above {TOL:.0e}.")
    add("")
    names = [n for n in impls if "golden" in impls[n]]
    configs = sorted(next(iter(impls[n]["golden"] for n in names)) if names else [])
    add("| configuration | bbce86e vs a1e5535 | " + " | ".join(_label(n, impls[n]) for n in names) + " |")
    add("|---|---|" + "---|" * len(names))
    commit_gap = _commit_gap(data)
    footnotes: List[str] = []
    for cfg in configs:
        gap = [commit_gap.get(cfg, {}).get(str(c), float("nan")) for c in cp.CALLS]
        row = [cfg, " · ".join("0" if x == 0 else f"{x:.0e}" for x in gap)]
        for n in names:
            e = impls[n]["golden"][cfg]
            if "error" in e:
                row.append(f"error: {_esc(e['error'])}")
                continue
            d = [e["a1e5535"][str(c)] for c in cp.CALLS]
            sens = [e.get("ulp_sensitivity", {}).get(str(c), 0.0) for c in cp.CALLS]
            txt = " · ".join(("0" if x == 0 else f"{x:.0e}") + ("‡" if s > 0.1 * x and x > TOL else "")
                             for x, s in zip(d, sens))
            if max(d) > TOL:
                txt = "**≠** " + txt
            if e.get("notes"):
                footnotes.append(f"{_label(n, impls[n])}, `{cfg}`: " + "; ".join(e["notes"]))
                txt += f" [{len(footnotes)}]"
            row.append(txt)
        add("| " + " | ".join(row) + " |")
    add("")
    add("‡: round-off decides this distance: moving every input by one ulp moves this implementation's own run by "
        "more than a tenth of it (the golden problems are well posed for the reference's algorithm, not for one that "
        "rotates a rank-deficient side).")
    add("")
    if names:
        worst = max(abs(impls[n]["golden"][c]["a1e5535"][str(k)] - impls[n]["golden"][c]["bbce86e"][str(k)])
                    for n in names for c in configs for k in cp.CALLS if "a1e5535" in impls[n]["golden"][c])
        add(f"Against bbce86e every distance differs from the one above by at most {worst:.0e}.")
        add("")
    for i, f in enumerate(footnotes, 1):
        add(f"[{i}] {_esc(f)}  ")
    if footnotes:
        add("")
    # ---------------------------------------------------------------- versions and mappings
    add("## Versions and keyword mappings")
    add("")
    add("| implementation | package | version | Python | torch |")
    add("|---|---|---|---|---|")
    for n, r in impls.items():
        env = r.get("environment", {})
        add(f"| {_label(n, r)} ({r.get('label', n)}) | {r.get('package', '?')} | {r.get('version', '-')} | "
            f"{env.get('python', '-')} | {env.get('torch', '-')} |")
    add("")
    add("Each implementation gets the reference's keywords (defaults: lr 3e-3, betas (0.95, 0.95), shampoo_beta −1 = "
        "\"use β2\", eps 1e-8, weight_decay 0.01, precondition_frequency 10, max_precond_dim 10000, merge_dims False, "
        "precondition_1d False, normalize_grads False, correct_bias True) mapped as follows, plus the fixed keywords "
        "listed.")
    add("")
    keys = list(cp.REF_DEFAULTS)
    mapped = [n for n in impls if n not in ref_names]
    add("| reference keyword | " + " | ".join(_label(n, impls[n]) for n in mapped) + " |")
    add("|---|" + "---|" * len(mapped))
    for k in keys:
        add(f"| `{k}` | " + " | ".join(_esc(impls[n].get("rules", {}).get(k, "?")) for n in mapped) + " |")
    add("| fixed | " + " | ".join(_esc(", ".join(f"{k}={v}" for k, v in impls[n].get("extras", {}).items()) or "-")
                                  for n in mapped) + " |")
    add("")
    add("Their own defaults for the same keywords (read off the installed classes; − : no such keyword):")
    add("")
    shown = [n for n in impls if "introspection" in impls[n] and n != REFERENCE["bbce86e"]]
    add("| reference keyword | " + " | ".join(_label(n, impls[n]) for n in shown) + " |")
    add("|---|" + "---|" * len(shown))
    for k in keys:
        add(f"| `{k}` | " + " | ".join(_esc(impls[n]["introspection"]["defaults"].get(k, "−")) for n in shown) + " |")
    add("")
    for n in shown:
        intro = impls[n]["introspection"]
        line = f"- {_label(n, impls[n])}: `{intro['class']}` (\"{_esc(intro.get('doc', ''))}\")"
        if not (n.startswith("heavyball") and n != "heavyball"):
            line += ("; the package's SOAP classes: " + ", ".join(f"`{c}`" for c in intro["soap_classes"])
                     + (" (no `ForeachSOAP`)" if n == "heavyball" and "ForeachSOAP" not in intro["soap_classes"]
                        else ""))
        add(line)
    add("")
    # ---------------------------------------------------------------- NVIDIA
    nv = impls.get("nvidia_emerging")
    if nv is not None:
        add("## NVIDIA emerging-optimizers")
        add("")
        la = nv.get("local_attempt", {})
        add(f"In the lab's interpreter ({la.get('interpreter', '?')}): import → `{_esc(la.get('import', '?'))}`; "
            f"pip → `{_esc(la.get('pip', '?'))}`.")
        add("")
        if "unavailable" in nv:
            add(f"Not measured: {_esc(nv['unavailable'])}")
        else:
            env = nv.get("environment", {})
            add(f"Measured in a separate interpreter, Python {env.get('python')} with torch {env.get('torch')} "
                f"(the PyPI wheel, run on the CPU) and emerging-optimizers {nv.get('version')}, as a worker: "
                f"`{nv.get('worker', {}).get('command', '')}`.")
            cc = nv.get("compile_cache_check")
            if cc:
                add("")
                add("Its Adam step (`calculate_adam_update`) is `@torch.compile`d. Measured here: the first update of "
                    f"the ε probe's problem is {cc['fresh'][:3]} in a fresh process and {cc['after another instance'][:3]} "
                    "when another instance with other betas and ε ran before in the same process "
                    f"({'the same' if cc['same'] else 'wrong: the recompiled step kept the earlier instance’s (1 − β) weights'}). "
                    "Every NVIDIA run here therefore starts from `torch._dynamo.reset()`, as a fresh process would.")
        add("")
    # ---------------------------------------------------------------- training
    if train:
        add(render_train(train))
    prov = data.get("provenance", {})
    add("## Provenance")
    add("")
    dev = prov.get("device", {})
    add(f"Probes and distances: commit {str(prov.get('git_commit'))[:7]} (dirty: {prov.get('git_dirty')}), "
        f"{prov.get('time')}, {dev.get('cpu')}, torch {prov.get('torch_version')}, 1 thread, "
        f"{prov.get('wall_s')} s. Golden data sha256 {data['golden']['sha256'][:12]}….")
    add("")
    return "\n".join(lines)


def _commit_gap(data: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """Per configuration and call, the distance between the reference's two commits (from the golden file)."""
    path = ROOT / data["golden"]["file"]
    if not path.exists():
        return {}
    golden = torch.load(path, weights_only=True)
    out = {}
    for name, cfg in golden["configs"].items():
        a, b = cfg["trajectory"]["a1e5535"], cfg["trajectory"]["bbce86e"]
        out[name] = {str(c): max(cp.rel(x, y) for x, y in zip(b[c - 1], a[c - 1])) for c in cp.CALLS}
    return out


# ============================================================================================ training
def lab_config(seed: int = 0):
    """The cpu_freq study's SOAP run at ``seed`` (f = 10, the tuned lr), as the lab trains and stores it."""
    from soap_lab.studies import SCALES, run_config, tuned_lr

    scale = SCALES["cpu_freq"]
    return run_config(scale, None, "soap", tuned_lr("soap", scale), seed=int(seed))


def train_config(steps: Optional[int] = None, seed: int = 0):
    """:func:`lab_config`, not saved to data/runs (``steps``: a shorter smoke run)."""
    import dataclasses

    over = {"save": False, "progress": False}
    if steps is not None:
        over.update(steps=steps, eval_every=0)
    return dataclasses.replace(lab_config(seed), **over)


class _Combined:
    """Two optimizers stepped as one (for an implementation that rejects 1-D parameters): ``param_groups`` is both
    lists, so the training loop's learning-rate schedule reaches every group."""

    def __init__(self, *opts):
        self.opts = opts

    @property
    def param_groups(self):
        return [g for o in self.opts for g in o.param_groups]

    @property
    def state(self):
        return {k: v for o in self.opts for k, v in o.state.items()}

    def step(self, closure=None):
        for o in self.opts:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return [o.state_dict() for o in self.opts]

    def load_state_dict(self, sd):
        for o, s in zip(self.opts, sd):
            o.load_state_dict(s)


def external_optimizer(impl: cp.Impl, kw: Dict[str, Any]):
    """A ``build_optimizer`` replacement: ``impl`` from the reference keywords of the run (``kw``: lr, betas,
    precondition_frequency; the rest the reference's defaults). NVIDIA's SOAP rejects 1-D parameters: those get
    ``torch.optim.AdamW`` with the same lr, betas, eps and weight decay."""

    def build(name, params, **hparams):
        ref = {**cp.REF_DEFAULTS, **{k: v for k, v in hparams.items() if k in cp.REF_DEFAULTS}}
        params = list(params)
        if isinstance(impl, cp.NvidiaEmerging):
            mats = [p for p in params if p.dim() == 2]
            vecs = [p for p in params if p.dim() != 2]
            opts = [impl.build(mats, ref)]
            if vecs:
                opts.append(torch.optim.AdamW(vecs, lr=ref["lr"], betas=tuple(ref["betas"]), eps=ref["eps"],
                                              weight_decay=ref["weight_decay"]))
            return _Combined(*opts)
        return impl.build(params, ref)

    return build


def train_one(name: str, steps: Optional[int] = None, seed: int = 0) -> Dict[str, Any]:
    """Train the cpu_freq config with implementation ``name`` (in this interpreter); the result as stored."""
    from soap_lab.records import store as results
    from soap_lab.records.provenance import provenance
    from soap_lab.train import train

    impl = cp.implementations()[name]
    cfg = train_config(steps, seed)
    kw = {"lr": cfg.lr, "betas": tuple(cfg.betas), "precondition_frequency": cfg.precondition_frequency}
    mapping, notes = impl.mapping({**cp.REF_DEFAULTS, **kw})
    if isinstance(impl, cp.NvidiaEmerging):
        notes = notes + ["1-D parameters (rejected by its SOAP): torch.optim.AdamW with the same lr, betas, eps, "
                         "weight_decay"]
    torch.manual_seed(int(seed))
    t0 = time.perf_counter()
    res = train(cfg, optimizer_factory=external_optimizer(impl, kw))
    out = {"schema": 1, "impl": name, "label": impl.label, "version": impl.version(),
           "config": results.config_dict(cfg), "reference_keywords": {**cp.REF_DEFAULTS, **kw},
           "mapping": {k: repr(v) for k, v in mapping.items()}, "notes": notes,
           "summary": res.summary, "val_step": res.metrics["val_step"], "val_loss": res.metrics["val_loss"],
           "wall_s": round(time.perf_counter() - t0, 1),
           "provenance": {**provenance(), "environment": cp.environment()}}
    if steps is None and name.startswith("soap_lab"):
        stored = results.record_path(lab_config(seed))
        if stored.exists():
            rec = json.loads(stored.read_text())
            out["stored_lab_record"] = {"file": str(stored.relative_to(ROOT)),
                                        "final_val_loss": rec["summary"].get("final_val_loss"),
                                        "git_commit": rec["provenance"].get("git_commit")}
    return out


def train_file(out_dir: Path, name: str, seed: int) -> Path:
    """``train_<impl>.json`` for seed 0 (the page's first column), ``train_<impl>_s<seed>.json`` for the others."""
    return out_dir / (f"train_{name}.json" if int(seed) == 0 else f"train_{name}_s{int(seed)}.json")


def run_train(impls: Sequence[str], out_dir: Path, steps: Optional[int], py312: Optional[str],
              seeds: Sequence[int] = (0,)) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for name in impls:
            path = train_file(out_dir, name, seed)
            if path.exists() and steps is None:
                print(f"{name} seed {seed}: {path} exists, skipped", file=sys.stderr)
                continue
            print(f"{name} seed {seed}: training …", file=sys.stderr, flush=True)
            if name in WORKER:
                res = _train_worker(name, steps, py312, seed)
            else:
                impl = cp.implementations()[name]
                missing = impl.available()
                res = {"impl": name, "unavailable": missing} if missing else train_one(name, steps, seed)
            path.write_text(json.dumps(res, indent=1, default=str) + "\n")
            print(f"{name} seed {seed}: {res.get('unavailable') or res['summary'].get('final_val_loss')}",
                  file=sys.stderr, flush=True)


def _train_worker(name: str, steps: Optional[int], py312: Optional[str], seed: int = 0) -> Dict[str, Any]:
    if not py312:
        return {"impl": name, "unavailable": "no Python >= 3.12 interpreter given (--py312 or CONFORMANCE_PY312)"}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [py312, str(Path(__file__).resolve()), "--train-worker", name, "--out", tmp, "--seeds", str(seed)]
        if steps is not None:
            cmd += ["--steps", str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        path = train_file(Path(tmp), name, seed)
        if proc.returncode != 0 or not path.exists():
            return {"impl": name, "unavailable": f"worker under {py312} exited {proc.returncode}: "
                                                 f"{_tail(proc.stderr or proc.stdout)}"}
        return json.loads(path.read_text())


def load_train(out_dir: Path) -> Dict[str, Dict[int, Any]]:
    """``{impl: {seed: stored result}}`` of the training runs under ``out_dir``."""
    out: Dict[str, Dict[int, Any]] = {}
    for p in sorted(out_dir.glob("train_*.json")):
        stem = p.stem[len("train_"):]
        name, _, seed = stem.rpartition("_s")
        if not (name and seed.isdigit()):
            name, seed = stem, "0"
        out.setdefault(name, {})[int(seed)] = json.loads(p.read_text())
    return out


def render_train(train: Dict[str, Dict[int, Any]]) -> str:
    """Final losses per implementation and seed, their mean and 95% interval, and the difference from the lab's
    SOAP in the reference's current mode (soap_lab eigenbasis) paired by seed."""
    from soap_lab import stats

    seeds = sorted({s for runs in train.values() for s in runs})
    base = {s: r["summary"]["final_val_loss"] for s, r in train.get("soap_lab_eigenbasis", {}).items()
            if "summary" in r}
    lines = [f"## Training: the cpu_freq GPT, 1000 steps, seeds {', '.join(map(str, seeds))}", "",
             "The lab's `cpu_freq` SOAP run (0.1M-parameter GPT on characters, batch 16×64, f = 10, the tuned lr, "
             "warmup + cosine, clipping 1.0) trained through `soap_lab.train.train` with each implementation in "
             "place of `soap_lab.SOAP` (`python benchmarks/conformance.py --train --seeds 0 1 2`); the same seed is "
             "the same init and data order for every implementation. Last column: its final loss minus soap_lab's "
             "(eigenbasis, the reference's current mode) per seed, mean and 95% Student-t interval.", "",
             "| implementation | version | " + " | ".join(f"seed {s}" for s in seeds) +
             " | mean ± 95% CI | − soap_lab eigenbasis | notes |", "|---|---|" + "---|" * len(seeds) + "---|---|---|"]
    for name, runs in train.items():
        first = runs[min(runs)]
        if all("unavailable" in r for r in runs.values()):
            lines.append(f"| {_label(name, first)} | - | " + " | " * len(seeds) + f" | | {_esc(str(first['unavailable']))} |")
            continue
        losses = {s: r["summary"].get("final_val_loss") for s, r in runs.items() if "summary" in r}
        cells = [f"{losses[s]:.4f}" if losses.get(s) is not None else "" for s in seeds]
        ok = [v for v in losses.values() if v is not None]
        iv = stats.mean_interval(ok) if ok else None
        mean = "" if iv is None else (f"{iv.mean:.4f} ± {iv.half_width:.4f}" if iv.n > 1 else f"{iv.mean:.4f}")
        d = stats.paired_differences(losses, base) if name != "soap_lab_eigenbasis" else {}
        dv = ""
        if d:
            div = stats.mean_interval(list(d.values()))
            dv = (f"{div.mean:+.4f} [{div.low:+.4f}, {div.high:+.4f}]" if div.n > 1 else f"{div.mean:+.4f}")
        notes = list(first.get("notes", []))
        stored = [r["stored_lab_record"] for s, r in sorted(runs.items()) if "stored_lab_record" in r]
        if stored:
            notes.append("the lab's stored records: " + ", ".join(f"{st['final_val_loss']:.4f}" for st in stored)
                         + f" (commits {', '.join(sorted({str(st['git_commit'])[:7] for st in stored}))})")
        lines.append(f"| {_label(name, first)} | {first.get('version')} | " + " | ".join(cells) +
                     f" | {mean} | {dv} | {_esc('; '.join(notes))} |")
    return "\n".join(lines) + "\n"


# ============================================================================================ main
def write_page(out_dir: Path, page: Path) -> None:
    data = json.loads((out_dir / "probes.json").read_text())
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render(data, load_train(out_dir) or None))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/conformance.py", description=__doc__.split("\n")[0])
    p.add_argument("--impls", nargs="+", default=None, choices=ALL, help="default: all")
    p.add_argument("--py312", default=os.environ.get("CONFORMANCE_PY312"),
                   help="a Python >= 3.12 with torch and emerging-optimizers==0.3.0 (NVIDIA's worker)")
    p.add_argument("--golden", default=str(GOLDEN))
    p.add_argument("--out", default=str(OUT), help="directory of the JSON results (default data/conformance)")
    p.add_argument("--page", default=str(PAGE), help="the page to write (default docs/conformance.md)")
    p.add_argument("--render", action="store_true", help="only render the page from the stored JSON")
    p.add_argument("--train", action="store_true", help="train cpu_freq (1000 steps, seed 0) per implementation")
    p.add_argument("--steps", type=int, default=None, help="with --train: fewer steps (a smoke run; not for the page)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="with --train: the seeds (default 0)")
    p.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    if args.train_worker:
        torch.set_num_threads(1)
        res = train_one(args.train_worker, args.steps, args.seeds[0])
        out_dir.mkdir(parents=True, exist_ok=True)
        train_file(out_dir, args.train_worker, args.seeds[0]).write_text(json.dumps(res, indent=1, default=str) + "\n")
        return 0
    if args.train:
        if args.steps is not None and out_dir.resolve() == OUT.resolve():
            p.error("--steps makes a smoke run: give it its own --out (the page reads data/conformance)")
        torch.set_num_threads(1)
        run_train(args.impls or ALL, out_dir, args.steps, args.py312, args.seeds)
    elif not args.render:
        data = collect(args.impls or ALL, Path(args.golden).resolve(), args.py312)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "probes.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    if (out_dir / "probes.json").exists():
        write_page(out_dir, Path(args.page))
        print(f"wrote {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
