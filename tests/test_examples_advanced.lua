-- The advanced-strategy recipes (examples/recipes/{distill,fewshot,domain_adapt,drift}.lua) run
-- in --quick mode and their method beats its baseline by a margin measured beforehand over
-- several seeds on the quick settings (numbers below; 2 CPU cores).
local T = require "testlib"
local vtl = require "vtl"
local test = T.test

local function run_quick(name, extra)
  local dir = os.tmpname()
  os.remove(dir)
  local cmd = string.format("%s examples/recipes/%s.lua --quick --set run_dir=%s %s 2>&1", os.getenv("VTL") or "./vtl",
    name, dir, extra or "")
  local p = io.popen(cmd)
  local out = p:read("a")
  local ok = p:close()
  T.truthy(ok, name .. " failed:\n" .. out)
  local m = vtl.json.decode(T.readfile(dir .. "/metrics.json"))
  os.execute("rm -rf '" .. dir .. "'")
  return m, out
end

if os.getenv("VTL_SAN") then
  T.skip("examples/recipes advanced --quick", "too slow under the sanitizers; run in the plain build")
  return
end

-- seeds 1, 2, 3: PSI max clean 0.070 / 0.040 / 0.051, strongest shift 7.9 / 8.3 / 7.7; PSI and
-- MMD rose at every level; clean never flagged, noise >= 0.15 always flagged; accuracy clean
-- minus strongest 0.42 / 0.47 / 0.40.
test("drift --quick: clean passes, the scores rise with the shift", function()
  local m, out = run_quick("drift")
  T.truthy(out:find("noise 0.30 + contrast", 1, true), out)
  local L = m.levels
  T.eq(#L, 5)
  T.truthy(not L[1].drift, "clean data not flagged")
  for i = 3, 5 do T.truthy(L[i].drift, L[i].name .. " flagged") end
  for i = 2, 5 do
    T.truthy(L[i].psi_max > L[i - 1].psi_max, "PSI rises: " .. L[i].name)
    T.truthy(L[i].mmd > L[i - 1].mmd, "MMD rises: " .. L[i].name)
  end
  T.truthy(L[5].psi_max > 10 * L[1].psi_max)
  T.truthy(L[1].accuracy - L[5].accuracy > 0.25, "the shift costs accuracy")
end)

-- seeds 1, 2, 3 (100 episodes each): 5-shot accuracy random-init features 0.604 / 0.481 / 0.477,
-- pretrained + prototypes 0.792 / 0.714 / 0.676, ProtoNet-trained 0.797 / 0.684 / 0.706,
-- fine-tuned head 0.817 / 0.735 / 0.679; 1-shot ProtoNet minus random 0.10 / 0.13 / 0.18.
test("fewshot --quick: learned features beat random features on held-out classes", function()
  local m = run_quick("fewshot")
  T.truthy(m.protonet.shot5 > m.random.shot5 + 0.1, ("ProtoNet %.3f vs random %.3f"):format(m.protonet.shot5, m.random.shot5))
  T.truthy(m.pretrained.shot5 > m.random.shot5 + 0.1, ("pretrained %.3f vs random %.3f"):format(m.pretrained.shot5, m.random.shot5))
  T.truthy(m.finetune.shot5 > m.random.shot5 + 0.1)
  T.truthy(m.protonet.shot5 > m.protonet.shot1, "5 shots beat 1")
  T.truthy(m.protonet.shot1_ci > 0 and m.protonet.shot1_ci < 0.05, "a confidence interval")
end)

-- seeds 1, 2, 3 (quick settings: 50 labelled + 200 unlabelled images per class): teacher
-- 0.778 / 0.764 / 0.776, student alone 0.758 / 0.708 / 0.722, student + KD 0.780 / 0.786 /
-- 0.786 (+0.022 / +0.078 / +0.064). Without the unlabelled transfer set distillation did not
-- beat the student alone here (student + KD 0.718 vs 0.729 over the same seeds).
test("distill --quick: the distilled student beats the student alone; size and latency table", function()
  local m, out = run_quick("distill")
  T.truthy(out:find("student + KD", 1, true), out)
  T.truthy(m.kd.accuracy > m.student.accuracy + 0.01,
    ("student + KD %.3f vs student alone %.3f"):format(m.kd.accuracy, m.student.accuracy))
  T.truthy(m.student.params * 10 < m.teacher.params)
  T.eq(m.student.params, m.kd.params)
  T.truthy(m.student.size_f32 < m.teacher.size_f32 and m.kd.latency_ms > 0)
end)

-- seeds 1, 2, 3 (quick settings: 60 source images per class, 10 epochs, target blurred + noise
-- 0.4): target accuracy source-only 0.150 / 0.173 / 0.110, target batches through batch norm
-- only 0.357 / 0.333 / 0.327, DANN 0.520 / 0.447 / 0.383, MMD 0.587 / 0.467 / 0.510. The test
-- holds each method to below the smallest margin seen over those seeds: over source-only (DANN
-- +0.27, MMD +0.29) and over the batch-norm-only row (DANN +0.056, MMD +0.13).
test("domain_adapt --quick: DANN and MMD beat source-only and batch-norm-only on the shifted target", function()
  local m, out = run_quick("domain_adapt")
  T.truthy(out:find("DANN", 1, true) and out:find("MMD", 1, true), out)
  T.truthy(m.source_only.source - m.source_only.target > 0.4, "a real domain gap")
  local so, bn = m.source_only.target, m.mixed_bn.target
  T.truthy(m.dann.target > so + 0.2, ("DANN %.3f vs source-only %.3f"):format(m.dann.target, so))
  T.truthy(m.mmd.target > so + 0.2, ("MMD %.3f vs source-only %.3f"):format(m.mmd.target, so))
  T.truthy(m.dann.target > bn + 0.03, ("DANN %.3f vs batch norm only %.3f"):format(m.dann.target, bn))
  T.truthy(m.mmd.target > bn + 0.05, ("MMD %.3f vs batch norm only %.3f"):format(m.mmd.target, bn))
end)


-- seeds 1, 2, 3 (quick settings): probability drop after deleting the top 10% pixels of each
-- map: Grad-CAM 0.136 / 0.167 / 0.172, saliency 0.338 / 0.375 / 0.390, occlusion 0.380 /
-- 0.401 / 0.358, random pixels 0.069 / 0.119 / 0.132 (smallest margins over random: Grad-CAM
-- +0.040, saliency +0.26, occlusion +0.23); f16 and bf16 predictions agreed with f32 on >= 99%.
test("explain --quick: every map deletes more evidence than random pixels; deployment table", function()
  local m, out = run_quick("explain")
  local d = m.deletion
  T.truthy(d["Grad-CAM"] > d["random pixels"] + 0.02, ("Grad-CAM %.3f vs random %.3f"):format(d["Grad-CAM"], d["random pixels"]))
  T.truthy(d.saliency > d["random pixels"] + 0.15, ("saliency %.3f vs random %.3f"):format(d.saliency, d["random pixels"]))
  T.truthy(d.occlusion > d["random pixels"] + 0.15, ("occlusion %.3f vs random %.3f"):format(d.occlusion, d["random pixels"]))
  T.truthy(out:find("overlays of 4 images", 1, true), out)
  T.truthy(m.f16.agreement >= 0.98 and m.bf16.agreement >= 0.98, "half precision agrees with f32")
  T.truthy(m.deploy.size_f16 < m.deploy.size_f32 and m.deploy.fused_latency_ms > 0, "deployment figures")
end)

-- the EfficientNet-Lite0 teacher (ImageNet weights, fine-tuned on resized RGB copies): a tiny
-- run that checks the pieces fit together; measured with the quick data at 96 px after 1 + 4
-- epochs (seed 1): teacher 0.716, student alone 0.758, student + KD 0.784
test("distill with an EfficientNet-Lite0 teacher runs end to end", function()
  if not vtl.models.is_model("efficientnet_lite0") then
    error("efficientnet_lite0 is not in this build's zoo", 0)
  end
  local m, out = run_quick("distill", "--set teacher=efficientnet_lite0 --set teacher_size=32 --set teacher_epochs=1 " ..
    "--set per_class=10 --set unlabelled_per_class=10 --set test_per_class=10 --set epochs=1")
  T.truthy(m.teacher.params > 3e6, "the teacher is EfficientNet-Lite0: " .. m.teacher.params .. " parameters")
  T.truthy(m.teacher.accuracy >= 0 and m.kd.accuracy >= 0 and m.kd.latency_ms > 0, out)
end)
