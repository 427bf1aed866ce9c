"""Drives a running `solrouter dev` with Instructor (`instructor.from_openai` over an
`openai` client whose base URL is the gateway) through the structured-output cases of
cases.json (see sdk_common.py): each case's JSON schema becomes a Pydantic model of the
same name, asked for in Instructor's JSON mode (the case wants a JSON object) or JSON
schema mode. Checks the validated model against the recording, and the usage and
`usage.cost` of the raw completion against the gateway's record."""

from importlib.metadata import version

import instructor
import openai

from sdk_common import API, KEY, check_record, equal, main, messages, model_of


def run(case):
    request, expect = case["request"], case["expect"]
    wanted = request["response_format"]
    mode = instructor.Mode.JSON if wanted["type"] == "json_object" else instructor.Mode.JSON_SCHEMA
    client = instructor.from_openai(openai.OpenAI(base_url=API, api_key=KEY, max_retries=0, timeout=60), mode=mode)
    options = {field: request[field] for field in ("temperature", "max_tokens") if field in request}
    answer, completion = client.chat.completions.create_with_completion(
        model=case["model"],
        messages=messages(case),
        response_model=model_of(wanted["name"], wanted["schema"]),
        max_retries=1,
        **options,
    )
    equal(answer.model_dump(), expect["object"], "object")
    usage = completion.usage
    wanted = expect["usage"]
    equal(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.completion_tokens_details.reasoning_tokens,
            usage.prompt_tokens_details.cached_tokens,
        ),
        (wanted["prompt_tokens"], wanted["completion_tokens"], wanted["reasoning_tokens"], wanted["cached_tokens"]),
        "usage",
    )
    return completion.id, check_record(case, completion.id, usage.cost)


main(f"instructor {version('instructor')}", run)
