"""sample-eval: replies sampled from eval.model for held-out conversations and for fixed zero- and
few-shot prompts, across the sampling grid eval.grid, turned into the logbook's impressions as
numbers. The prompts are in prompt.format, which must be the format eval.model was trained with.
Writes the headline metrics to metrics/sample-eval.json (DVC's metrics), every metric to
reports/sample-eval.json, the replies to reports/samples.jsonl and reports/sample-eval.html."""

from pathlib import Path

from chatmill.errors import exit_on_error
from chatmill.evaluation import evaluate, validate_eval, write_results
from chatmill.layout import REPORT_FILE
from chatmill.params import stage_params
from chatmill.prompt import validate_format


@exit_on_error
def main() -> None:
    declared = stage_params("sample-eval")
    params = validate_eval(declared["eval"])
    model_dir = Path(params["model"])
    metrics, samples = evaluate(model_dir, params, validate_format(declared["prompt"]))
    write_results(str(model_dir), metrics, samples)
    overall = metrics["overall"]
    print(
        f"sample-eval: {model_dir}: eval_loss {metrics['eval_loss']}, short_rate {overall['short_rate']}, "
        f"regens_to_accept {overall['regens_to_accept']} over {len(samples)} replies; {REPORT_FILE}"
    )


if __name__ == "__main__":
    main()
