"""minisearcher: R1-Searcher in a few readable files. The data flow, one module per box:

questions (data) -> rollout(policy, retriever) -> episodes -> rewards -> group advantages -> GRPO loss -> step
"""
