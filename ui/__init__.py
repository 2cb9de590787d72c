"""The Space's shared UI infrastructure: strict inputs, output files under a disk cap, and fair use of the queue.

Nothing here computes diffusion: that is ``ddpm_core``'s job. This package turns requests into ``ddpm_core`` calls
safely and hands results to gradio.
"""
