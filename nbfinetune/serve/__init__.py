"""An OpenAI-compatible HTTP API over fine-tuned runs: `protocol` (wire format), `engine` (batched
multi-adapter generation), `http` (tornado app), `local` (start it here), `tokens` (API keys)."""
