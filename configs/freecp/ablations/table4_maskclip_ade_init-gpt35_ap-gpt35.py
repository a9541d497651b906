# Table 4 "FreeCP, GPT-3.5 / GPT-3.5": FreeCP + MaskCLIP on ADE20K-150 with the
# GPT-3.5 descriptions for the initial queries and for ambiguity
# purification.
# The GPT-3.5 descriptions do not ship (the paper's are unpublished): write
# data/descriptions/gpt-3.5/ade150.json with tools/generate_descriptions.py
# (data/class_names/reference/ade150.txt, --api-base ... --model
# gpt-3.5-turbo) or point the slot at another file:
# --cfg-options model.decode_head.descriptions=/path/to/file.json
_base_ = ['../maskclip_ade.py']
model = dict(
    decode_head=dict(
        initial_text='descriptions', ap_text='descriptions',
        descriptions='data/descriptions/gpt-3.5/ade150.json'))
