"""AR + diffusion hybrids on the toolkit core: MAR (masked autoregression with a per-token
diffusion head), Diffusion Forcing (per-token noise levels in a causal transformer) and a
Transfusion-style shared transformer (LM loss on text, flow loss on image patches)."""
