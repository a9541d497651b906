# SCLIP baseline at FreeCP's settings on PASCAL VOC 21 (FreeCP paper Tables 1, 3
# and 4 "Baseline"; Table 2 quotes the official SCLIP numbers instead,
# configs/baselines/sclip_voc21.py). The FreeCP config ../sclip_voc21.py with the
# baseline's head: same strategy, vocabulary, prompts, short side 448 and
# 384/112 windows; settings of the baseline used here:
# - strategy: FreeCP's SCLIP variant (no residual, FFN kept; official: residual=True);
# - scoring: CosineSimilarityHead, softmax(tau * cos) over all queries, max over
#   synonyms, tau 65 (configs/baselines/sclip_voc21.py);
# - no prob_thd, area_thd or PAMR (FreeCP's settings; the official baseline's
#   rules are --cfg-options model.prob_thd=... model.area_thd=...).
_base_ = ['../sclip_voc21.py']
model = dict(
    decode_head=dict(
        _delete_=True, type='CosineSimilarityHead', logit_scale=65.0))
