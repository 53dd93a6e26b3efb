"""User-facing applications: the Gradio demo, sampling, diffusion-target visualisation, run reports."""
