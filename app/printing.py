"""What `malaria` prints for people (without `--json`): a few aligned lines per command."""

from pathlib import Path
from typing import Any


def print_human(command: str, result: dict[str, Any]) -> None:
    if command == "stack":
        print_stack(result)
    elif command == "variants":
        for variant in result["variants"]:
            if variant["parameters"] is None:
                print(f"{variant['name']:<10} {'n/a':>12}  {variant['unavailable']}")
            else:
                count, description = variant["parameters"], variant["description"]
                print(f"{variant['name']:<10} {count:>12,}  {description}")
    elif command == "predict":
        print(
            f"{result['rows']} images scored ({result['parasitized']} parasitized) with "
            f"{result['model_uri']} → {result['output']}"
        )
        if result["skipped"]:
            print(f"skipped  {len(result['skipped'])} unreadable file(s)")
    elif command == "label-issues":
        print(
            f"{result['flagged']} of {result['cells_checked']} labels flagged "
            f"({result['flagged_share']:.1%}) → {result['review_table']}"
            + (" (reused)" if result.get("reused") else "")
        )
    elif command == "evaluate":
        print(
            f"{result['model_uri']}: test accuracy {result['accuracy']:.3f}, confusion "
            f"{result['confusion_matrix']} (rows true:yes/no, cols pred:yes/no)"
        )
        print(f"report   {result['report']}")
    else:
        dataset = result.get("dataset") if command == "pipeline" else result
        if dataset and "rows" in dataset:
            state = "reused" if dataset["cache_hit"] else "written"
            print(f"dataset  {dataset['path']} ({dataset['rows']} images, {state})")
        for run in result.get("runs", []):
            print(
                f"{run['variant']:<10} test accuracy {run['test_accuracy']:.3f}  "
                f"{run['alias'] or '':<10}  run {run['run_id']}  model {run['model_uri']}"
            )
        if command == "pipeline":
            best = result["best"]
            print(f"best     {best['variant']} ({best['test_accuracy']:.3f})")
            champion = result.get("champion")
            if champion:
                print(f"champion version {champion['version']} ({champion['model_uri']})")


def print_stack(result: dict[str, Any]) -> None:
    if result["action"] == "up":
        print(f"Prefect UI   {result['prefect_url']}   (flow runs, deployments, the Run form)")
        print(f"MLflow UI    {result['mlflow_url']}   (runs, comparisons, the model registry)")
        print(f"deployments  {', '.join(result['deployments'])}")
        print(f"alerts       {_alerts_line(result['alerts'])}")
        print(f"logs         {Path(next(iter(result['logs'].values()))).parent}/")
        print("use it from a shell:")
        for name, value in result["env"].items():
            print(f"  export {name}={value}")
    elif result["action"] == "down":
        print(f"stopped {', '.join(result['stopped'])}")
    elif result["action"] == "alerts":
        print(f"alerts on {result['prefect_api_url']}: {_alerts_line(result['alerts'])}")
    else:
        for name, process in result["processes"].items():
            state = "running" if process["running"] else "NOT running"
            print(f"{name:<15} pid {process['pid']:<8} {state:<12} {process['log']}")


def _alerts_line(alerts: list[str]) -> str:
    return "; ".join(alerts) or "none"
