"""Drives a running `solrouter dev` with LangChain's `langchain-openai` ChatOpenAI (its
base URL set to the gateway) through the cases of cases.json (see sdk_common.py):
`stream` for streamed text, `bind_tools(...).stream` for streamed tool calls,
`with_structured_output` (JSON mode or a JSON schema) for structured output, and
`invoke` with an image part; then OpenAIEmbeddings on `mock/embed`. Checks the text, tool calls, parsed object and token usage
against the recording, and each cost against the gateway's newest record (LangChain
exposes no answer id, and `usage.cost` only in an unstreamed answer's
`response_metadata`)."""

from importlib.metadata import version

from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from sdk_common import API, KEY, check_calls, check_embedding, check_record, equal, latest_generation, main, messages, tools


def check_usage(case, message):
    usage = message.usage_metadata
    wanted = case["expect"]["usage"]
    equal(
        (
            usage["input_tokens"],
            usage["output_tokens"],
            usage.get("output_token_details", {}).get("reasoning", 0),
            usage.get("input_token_details", {}).get("cache_read", 0),
        ),
        (wanted["prompt_tokens"], wanted["completion_tokens"], wanted["reasoning_tokens"], wanted["cached_tokens"]),
        "usage",
    )


def streamed(model, case):
    answer = None
    for chunk in model.stream(messages(case)):
        answer = chunk if answer is None else answer + chunk
    return answer


def run(case):
    llm = ChatOpenAI(model=case["model"], base_url=API, api_key=KEY, max_retries=0, timeout=60, stream_usage=True)
    request, expect = case["request"], case["expect"]
    llm = llm.bind(**{field: request[field] for field in ("temperature", "max_tokens") if field in request})
    cost = None
    if case["kind"] == "stream_text":
        message = streamed(llm, case)
        equal(message.content, expect["text"], "text")
    elif case["kind"] == "stream_tools":
        message = streamed(llm.bind_tools(tools(case)), case)
        check_calls([(call["name"], call["args"]) for call in message.tool_calls], case)
    elif case["kind"] == "structured":
        wanted = request["response_format"]
        if wanted["type"] == "json_object":
            structured = llm.with_structured_output(method="json_mode", include_raw=True)
        else:
            schema = {key: wanted[key] for key in ("name", "description", "schema")}
            structured = llm.with_structured_output(schema, method="json_schema", include_raw=True)
        answer = structured.invoke(messages(case))
        message = answer["raw"]
        equal(answer["parsed"], expect["object"], "object")
        cost = message.response_metadata["token_usage"]["cost"]
    else:
        message = llm.invoke(messages(case))
        equal(message.content, expect["text"], "text")
        cost = message.response_metadata["token_usage"]["cost"]
    check_usage(case, message)
    # LangChain's message ids are its own run ids.
    generation = latest_generation()
    return generation, check_record(case, generation, cost)


def embeddings():
    texts = ["the first text to embed", "and a second one"]
    # No tiktoken tokenising: mock/embed is no OpenAI model.
    model = OpenAIEmbeddings(model="mock/embed", base_url=API, api_key=KEY, check_embedding_ctx_length=False, max_retries=0)
    return check_embedding(model.embed_documents(texts), texts)


main(f"langchain-openai {version('langchain-openai')}", run, [embeddings])
