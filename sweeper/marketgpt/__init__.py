"""MarketGPT: the project's own GPT-style candle model (design seed 004).

Candles become tokens (k-means bins of log returns, `tokenizer`), a causal transformer predicts the next
candle's tokens and a few steps of continuous returns (`model`), `train` fits it on the bars before a
sweep's first validation origin (fine-tuning goes through `sweeper.finetune`), and `sampling` turns it into
close-price paths for the `marketgpt` backend. Nothing here imports torch at package import time.
"""
