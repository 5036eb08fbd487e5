# aaclip-xattn: train every arm of the AA-CLIP comparison across datasets x shots x seeds, evaluate them
# the same way, and test the differences. Wiring only; the rules live in workflow/rules/.
from snakemake.utils import min_version, validate

min_version("9.1")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/stats.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
    localrule: True


rule report:
    input:
        checklist="results/stats/checklist.json",
        comparisons="results/stats/comparisons.csv",
        metrics="results/stats/metrics_long.csv",
        benchmarks="results/stats/benchmarks.csv",
    output:
        html=report(
            "results/report/index.html",
            caption="workflow/report/report_index.rst",
            category="Statistics",
            subcategory="Report",
        ),
        markdown="results/report/report.md",
        figures=report(
            directory("results/report/figures"),
            patterns=["{name}.svg"],
            caption="workflow/report/figures.rst",
            category="Statistics",
            subcategory="Figures",
        ),
    log:
        "results/logs/report/report.log",
    localrule: True
    conda:
        "envs/aaclip.yaml"
    params:
        stats=config["stats"],
    script:
        "workflow/scripts/report.py"
