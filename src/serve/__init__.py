"""A chat service with multi-level memory over HTTP (`memory-models serve CONFIG`).

`config` reads the serve config (checkpoint, database, memory budgets, generation and learning
settings), `chat.ChatService` answers and streams replies from a `PaperModel` with the memories of
`src.memory_system` as context, `learning.IncrementalLearner` adapts the model with LoRA after an
interaction, `app.create_app` is the FastAPI application and `server.serve` runs it with uvicorn.
FastAPI, uvicorn and pydantic come with the optional extra `serve`.
"""
