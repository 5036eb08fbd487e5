# Helpers shared by all rule files. The study lists read from the (validated) config, consistency
# checks that name the offending key, wildcard constraints and the input/params functions.
import os
import re
import shutil
from pathlib import Path

RESULTS = "results"
FROM_BASE_ARMS = ("xattn_from_base", "baseline_continued")
# Files of a run that its evaluation reads (named inputs of the evaluate_* rules).
RUN_INPUTS = {
    "text_adapter": "text_adapter.pth",
    "image_adapter": "image_adapter.pth",
    "run": "run.json",
}
# Placeholder roots in config/paper.yaml start with this; they fail with a pointer to the key to edit.
PLACEHOLDER_PREFIX = "/path/to/"


def _config_problems(cfg):
    """Return one message per inconsistency the JSON schema cannot express (key path first)."""
    problems = []
    names = [d["name"] for d in cfg["datasets"]]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(
            f"datasets: name {dup!r} is used more than once; names must be unique"
        )
    for i, spec in enumerate(cfg["datasets"]):
        root = spec.get("root")
        if root is not None:
            hint = (
                " (a placeholder: set it to your copy of the dataset)"
                if root.startswith(PLACEHOLDER_PREFIX)
                else ""
            )
            if not Path(root).is_dir():
                problems.append(
                    f"datasets[{i}].root (dataset {spec['name']!r}): directory {root!r} does not exist{hint}"
                )
    weights = cfg["backbone"]["weights"]
    if weights is not None and not Path(weights).is_file():
        hint = (
            " (a placeholder: point it at the downloaded weights file)"
            if weights.startswith(PLACEHOLDER_PREFIX)
            else ""
        )
        problems.append(f"backbone.weights: file {weights!r} does not exist{hint}")
    descriptions = cfg["train"]["descriptions"]
    if descriptions is not None and not Path(descriptions).is_file():
        problems.append(f"train.descriptions: file {descriptions!r} does not exist")
    for i, entry in enumerate(cfg["study"]["train_datasets"]):
        for key, value in [("name", entry["name"])] + [
            (f"test_datasets[{j}]", t) for j, t in enumerate(entry["test_datasets"])
        ]:
            if value not in names:
                problems.append(
                    f"study.train_datasets[{i}].{key}: {value!r} is not a dataset in `datasets` "
                    f"(known: {', '.join(names)})"
                )
    study = cfg["study"]
    arms = study["arms"]
    if any(arm in arms for arm in FROM_BASE_ARMS) and "baseline" not in arms:
        problems.append(
            "study.arms: xattn_from_base and baseline_continued start from `baseline`; list it too"
        )
    if "few_shot" in study["training_mode"]:
        for i, entry in enumerate(study["train_datasets"]):
            if not entry.get("shots", study["shots"]):
                problems.append(
                    f"study.train_datasets[{i}].shots / study.shots: few_shot training needs at least one shot"
                )
    for i, pair in enumerate(cfg["stats"]["comparisons"]):
        for arm in pair:
            if arm not in arms:
                problems.append(
                    f"stats.comparisons[{i}]: arm {arm!r} is not in study.arms ({', '.join(arms)})"
                )
    return problems


_problems = _config_problems(config)
if _problems:
    raise ValueError(
        "invalid configuration (see config/README.md):\n  " + "\n  ".join(_problems)
    )

DATASETS = {d["name"]: d for d in config["datasets"]}
SYNTHETIC = [name for name, d in DATASETS.items() if "synthetic" in d]
REAL = [name for name, d in DATASETS.items() if "root" in d]
TEST_DATASETS = {
    entry["name"]: entry["test_datasets"] for entry in config["study"]["train_datasets"]
}


def _shotdirs(entry):
    """Return the shot folders (`shot<k>`, `full`) of one `study.train_datasets` entry."""
    modes = config["study"]["training_mode"]
    shots = entry.get("shots", config["study"]["shots"]) if "few_shot" in modes else []
    return [f"shot{k}" for k in shots] + (["full"] if "full_shot" in modes else [])


# Shot folders per training dataset (`shots` of an entry overrides `study.shots`), and their union.
SHOTDIRS_OF = {
    entry["name"]: _shotdirs(entry) for entry in config["study"]["train_datasets"]
}
SHOTDIRS = sorted({sd for dirs in SHOTDIRS_OF.values() for sd in dirs})
SEEDS = config["study"]["seeds"]
ARMS = config["study"]["arms"]
# compute.seed_batch > 1: the seeds of an arm train in groups of this many, one job per group
# (aaclip_xattn.train.seed_batched), writing the same per-seed files as the per-seed train_<arm> jobs.
SEED_BATCH = config["compute"]["seed_batch"]
SEED_GROUPS = [SEEDS[i : i + SEED_BATCH] for i in range(0, len(SEEDS), SEED_BATCH)]


def _alternation(values):
    """Regex matching exactly one of ``values`` (never matches when the list is empty)."""
    return "|".join(re.escape(v) for v in values) if values else "(?!x)x"


wildcard_constraints:
    dataset=_alternation(DATASETS),
    test_dataset=_alternation(DATASETS),
    shotdir=r"shot\d+|full",
    seed=r"\d+",
    arm=_alternation(ARMS),


def _gpu_visible():
    """Whether this machine shows an NVIDIA GPU, without importing torch in the scheduler."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return shutil.which("nvidia-smi") is not None


# The issue asks for `resources: gpu=1` on training and evaluation. We derive it from the configured
# device instead: 1 on cuda (or auto with a GPU visible), 0 on cpu. With `--resources gpu=1` a gpu=1
# claim serialises every training/evaluation job; on the CPU-only default study that would forbid
# running two 1-thread jobs side by side and push the study past its 5-minute budget. The SLURM profile
# sets gpu=1 per rule explicitly (`set-resources`), which overrides this value.
GPU_PER_JOB = (
    1
    if config["compute"]["device"] == "cuda"
    or (config["compute"]["device"] == "auto" and _gpu_visible())
    else 0
)


def get_dataset_spec(name):
    """Return ``{name, layout, root}`` for a configured dataset (synthetic ones live under results/data)."""
    spec = DATASETS[name]
    root = spec["root"] if "root" in spec else f"{RESULTS}/data/{name}"
    return {"name": name, "layout": spec["layout"], "root": root}


def get_synthetic_spec(wildcards):
    """Return the `synthetic` mapping of the dataset being generated."""
    return DATASETS[wildcards.dataset]["synthetic"]


def get_dataset_params(wildcards):
    """Return the dataset spec of the `dataset` wildcard."""
    return get_dataset_spec(wildcards.dataset)


def get_split_params(wildcards):
    """Return the few-shot manifest settings of one (dataset, shot, seed)."""
    full = wildcards.shotdir == "full"
    return {
        "dataset": wildcards.dataset,
        "training_mode": "full_shot" if full else "few_shot",
        "shot": None if full else int(wildcards.shotdir.removeprefix("shot")),
        "seed": int(wildcards.seed),
    }


def get_train_settings():
    """Return the TrainConfig mapping: the train section plus backbone, compute and fusion settings.

    The seed is not here: it comes from the `seed` wildcard, so adding a seed leaves the other runs'
    params (a rerun trigger) unchanged. `fusion` is the evaluator's, recorded by every arm up front.
    """
    backbone, compute = config["backbone"], config["compute"]
    return {
        **config["train"],
        "fusion": config["evaluate"]["fusion"],
        "backbone": backbone["name"],
        "pretrained": backbone["weights"],
        "image_size": backbone["image_size"],
        "device": compute["device"],
        "amp": compute["amp"],
    }


def get_eval_settings():
    """Return the EvalConfig mapping: the evaluate section plus compute settings and the prompts' descriptions.

    `device` may be `auto`; the evaluation script resolves it on the machine that runs the job.
    """
    return {
        **config["evaluate"],
        "device": config["compute"]["device"],
        "amp": config["compute"]["amp"],
        "descriptions": config["train"]["descriptions"],
    }


def get_test_specs(train_dataset):
    """Return the dataset specs a training dataset's runs are evaluated on."""
    return [get_dataset_spec(name) for name in TEST_DATASETS[train_dataset]]


def get_test_summaries(train_dataset):
    """Return the dataset check files of a training dataset's test datasets."""
    return [
        f"{RESULTS}/data/{name}.summary.csv" for name in TEST_DATASETS[train_dataset]
    ]


def get_run_files(wildcards):
    """Return the files of the run that the `evaluate_*` job of these wildcards scores."""
    run = f"{RESULTS}/runs/{wildcards.dataset}/{wildcards.shotdir}/seed{wildcards.seed}/{wildcards.arm}"
    return {key: f"{run}/{name}" for key, name in RUN_INPUTS.items()}


def seed_group_id(seeds):
    """Return the file-name id of a seed group: ``seeds0-1-2`` (its seeds in config order)."""
    return "seeds" + "-".join(str(seed) for seed in seeds)


def get_group_inputs(arm, seeds):
    """Return the input function of a seed group's job: every seed's manifest (+ its baseline files).

    Lists keep the group's seed order; the from-base arms also need each seed's baseline files.
    """

    def inputs(wildcards):
        prefix = f"{RESULTS}/runs/{wildcards.dataset}/{wildcards.shotdir}"
        out = {
            "manifests": [
                f"{RESULTS}/splits/{wildcards.dataset}/{wildcards.shotdir}/seed{seed}.json"
                for seed in seeds
            ]
        }
        if arm in FROM_BASE_ARMS:
            for key, name in RUN_INPUTS.items():
                out[f"base_{key}"] = [
                    f"{prefix}/seed{seed}/baseline/{name}" for seed in seeds
                ]
        return out

    return inputs


def get_group_outputs(arm, seeds, name):
    """Return a seed group's output paths of one run file (``{dataset}``/``{shotdir}`` left as wildcards)."""
    return [
        f"{RESULTS}/runs/{{dataset}}/{{shotdir}}/seed{seed}/{arm}/{name}"
        for seed in seeds
    ]


def _study_keys():
    """Yield (train_dataset, shotdir, seed, arm) for every planned run."""
    for train_dataset in TEST_DATASETS:
        for shotdir in SHOTDIRS_OF[train_dataset]:
            for seed in SEEDS:
                for arm in ARMS:
                    yield train_dataset, shotdir, seed, arm


def get_expected_runs():
    """Return the launch manifest: one record per planned run with its test datasets."""
    return [
        {
            "train_dataset": ds,
            "shot": shotdir.removeprefix("shot"),
            "seed": seed,
            "arm": arm,
            "test_datasets": list(TEST_DATASETS[ds]),
        }
        for ds, shotdir, seed, arm in _study_keys()
    ]


def get_run_records():
    """Return every planned run's run.json."""
    return [
        f"{RESULTS}/runs/{ds}/{sd}/seed{s}/{arm}/run.json"
        for ds, sd, s, arm in _study_keys()
    ]


def get_eval_tables(ext="csv"):
    """Return every planned evaluation table (`csv`) or sidecar (`json`)."""
    return [
        f"{RESULTS}/eval/{ds}/{sd}/seed{s}/{arm}/{test}.{ext}"
        for ds, sd, s, arm in _study_keys()
        for test in TEST_DATASETS[ds]
    ]


def get_eval_sidecars():
    """Return every planned evaluation sidecar JSON."""
    return get_eval_tables("json")


def get_splits():
    """Return every planned few-shot manifest."""
    return [
        f"{RESULTS}/splits/{ds}/{sd}/seed{s}.json"
        for ds in TEST_DATASETS
        for sd in SHOTDIRS_OF[ds]
        for s in SEEDS
    ]


def get_benchmark_records():
    """Return one record per training/evaluation benchmark file, with its wildcard values."""
    records = []
    for ds, sd, s, arm in _study_keys():
        keys = {
            "train_dataset": ds,
            "shot": sd.removeprefix("shot"),
            "seed": s,
            "arm": arm,
        }
        tail = f"{ds}/{sd}/seed{s}/{arm}.tsv"
        if SEED_BATCH == 1:
            records.append(
                {
                    "rule": f"train_{arm}",
                    "path": f"{RESULTS}/benchmarks/train_{arm}/{tail}",
                    **keys,
                }
            )
        records.append(
            {
                "rule": "evaluate",
                "path": f"{RESULTS}/benchmarks/evaluate/{tail}",
                **keys,
            }
        )
    if SEED_BATCH > 1:
        # One training benchmark per seed group; its `seed` column names the group (`0-1-2`).
        for ds in TEST_DATASETS:
            for sd in SHOTDIRS_OF[ds]:
                for arm in ARMS:
                    for seeds in SEED_GROUPS:
                        group = seed_group_id(seeds)
                        records.append(
                            {
                                "rule": f"train_group_{arm}",
                                "path": f"{RESULTS}/benchmarks/train_group_{arm}/{ds}/{sd}/{group}.tsv",
                                "train_dataset": ds,
                                "shot": sd.removeprefix("shot"),
                                "seed": group.removeprefix("seeds"),
                                "arm": arm,
                            }
                        )
    return records


def get_benchmarks():
    """Return every benchmark TSV (the inputs of collect_benchmarks)."""
    return [record["path"] for record in get_benchmark_records()]


def get_final_output():
    """Return the targets of the `all` target (the study's tables, checklist and report)."""
    return [
        f"{RESULTS}/stats/metrics_long.csv",
        f"{RESULTS}/stats/benchmarks.csv",
        f"{RESULTS}/stats/comparisons.csv",
        f"{RESULTS}/stats/checklist.json",
        f"{RESULTS}/report/index.html",
    ]
