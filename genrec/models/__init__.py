"""PyTorch models: RQ-VAE semantic IDs, UGT encoder, MoE decoder, SASRec baseline."""
