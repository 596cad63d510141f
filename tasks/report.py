"""Report task: the run's pictures and HTML report, logged to MLflow and summarised in Prefect."""

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from cnn.evaluation.promotion import PromotionDecision
from tasks.keys import artifact_key
from tasks.retry import IO_RETRIES
from tracking.evaluation import log_run_report, report_markdown
from tracking.store import tracking_uri


@task(name="render-report", **IO_RETRIES)
def render_report(
    model_uri: str, dataset_path: str, run_id: str, promotion: PromotionDecision | None = None
) -> str:
    """Render the run's report (PNGs + one HTML page) into its MLflow artifacts under
    `report/`, leave a Prefect markdown summary (key `run-report-<variant>`); return the
    HTML's URI.
    Runs after `evaluate-model`, whose logged test predictions it reads."""
    report = log_run_report(model_uri, dataset_path, run_id, promotion)
    create_markdown_artifact(
        key=artifact_key("run-report", report.summary["variant"]),
        markdown=report_markdown(report, tracking_uri()),
        description=f"Report of MLflow run {run_id}",
    )
    get_run_logger().info("Report of run %s: %s", run_id, report.uri)
    return report.uri
