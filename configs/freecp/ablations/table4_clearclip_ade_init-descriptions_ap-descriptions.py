# Table 4: FreeCP + ClearCLIP on ADE20K-150 with descriptions everywhere
# (FreeCP default: templates for the initial vocabulary, descriptions for AP).
_base_ = ['../clearclip_ade.py']
model = dict(decode_head=dict(initial_text='descriptions', ap_text='descriptions'))
