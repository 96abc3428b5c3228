"""Remote engines: the Engine protocol over OpenAI-compatible HTTP servers (llama-server, vLLM,
llama-cpp-python's server). See README.md beside this file. Nothing here imports llama_cpp."""
