// spm.cc: extern "C" shim over libsentencepiece's SentencePieceProcessor (see data/spm.h).
// Only the public API of sentencepiece_processor.h (0.1.97, Debian libsentencepiece-dev) is used.
#include "data/spm.h"

#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

extern "C" {
#include "model/util.h"
}

struct T5gSpm {
  sentencepiece::SentencePieceProcessor sp;
};

extern "C" T5gSpm *t5g_spm_load(const char *path) {
  T5gSpm *s = nullptr;
  try {
    s = new T5gSpm;
    const auto st = s->sp.Load(path);
    if (!st.ok()) {
      t5g_error("%s: not a loadable SentencePiece model (tokenizer.model): %s", path, st.ToString().c_str());
      delete s;
      return nullptr;
    }
    if (s->sp.GetPieceSize() <= 0) {
      t5g_error("%s: SentencePiece model has an empty vocabulary", path);
      delete s;
      return nullptr;
    }
  } catch (const std::exception &e) {
    t5g_error("%s: loading the SentencePiece model failed: %s", path, e.what());
    delete s;
    return nullptr;
  }
  return s;
}

extern "C" void t5g_spm_free(T5gSpm *s) { delete s; }

extern "C" int t5g_spm_vocab_size(const T5gSpm *s) { return s->sp.GetPieceSize(); }

extern "C" const char *t5g_spm_piece(const T5gSpm *s, int id, size_t *len) {
  const std::string &p = s->sp.IdToPiece(id);
  if (len) *len = p.size();
  return p.c_str();
}

extern "C" float t5g_spm_score(const T5gSpm *s, int id) { return s->sp.GetScore(id); }

extern "C" int t5g_spm_kind(const T5gSpm *s, int id) {
  if (s->sp.IsUnknown(id)) return T5G_SPM_UNKNOWN;
  if (s->sp.IsControl(id)) return T5G_SPM_CONTROL;
  if (s->sp.IsByte(id)) return T5G_SPM_BYTE;
  if (s->sp.IsUnused(id)) return T5G_SPM_UNUSED;
  return T5G_SPM_NORMAL;
}

extern "C" int t5g_spm_unk_id(const T5gSpm *s) { return s->sp.unk_id(); }
extern "C" int t5g_spm_bos_id(const T5gSpm *s) { return s->sp.bos_id(); }
extern "C" int t5g_spm_eos_id(const T5gSpm *s) { return s->sp.eos_id(); }
extern "C" int t5g_spm_pad_id(const T5gSpm *s) { return s->sp.pad_id(); }

extern "C" int t5g_spm_encode(const T5gSpm *s, const char *text, size_t len, int32_t **ids,
                              int64_t *n, int64_t *cap) {
  try {
    std::vector<int> out;
    const auto st = s->sp.Encode(absl::string_view(text, len), &out);
    if (!st.ok()) return t5g_error("SentencePiece encode failed: %s", st.ToString().c_str());
    if (*n + (int64_t)out.size() > *cap) {
      int64_t c = *cap ? *cap : 64;
      while (c < *n + (int64_t)out.size()) c *= 2;
      *ids = (int32_t *)t5g_realloc(*ids, (size_t)c * sizeof(int32_t));
      *cap = c;
    }
    for (size_t i = 0; i < out.size(); i++) (*ids)[*n + (int64_t)i] = (int32_t)out[i];
    *n += (int64_t)out.size();
  } catch (const std::exception &e) {
    return t5g_error("SentencePiece encode failed: %s", e.what());
  }
  return 0;
}

extern "C" int t5g_spm_decode(const T5gSpm *s, const int32_t *ids, int64_t n, char **out,
                              size_t *len, size_t *cap) {
  try {
    std::vector<int> v(ids, ids + n);
    std::string text;
    const auto st = s->sp.Decode(v, &text);
    if (!st.ok()) return t5g_error("SentencePiece decode failed: %s", st.ToString().c_str());
    if (*len + text.size() + 1 > *cap) {
      size_t c = *cap ? *cap : 64;
      while (c < *len + text.size() + 1) c *= 2;
      *out = (char *)t5g_realloc(*out, c);
      *cap = c;
    }
    memcpy(*out + *len, text.data(), text.size());
    *len += text.size();
    (*out)[*len] = 0;
  } catch (const std::exception &e) {
    return t5g_error("SentencePiece decode failed: %s", e.what());
  }
  return 0;
}
