/* tok_internal.h: the tokenizer's data structures, shared by load, encode and decode.
 *
 * DESIGN: a tokenizer is a few tables built at load and never changed: vocab (string -> id, an
 * open-addressing hash over one string arena), id -> string, merges ((left id, right id) ->
 * (rank, new id)), a byte trie of added tokens, and the pipeline components as small tagged
 * structs. Work strings travel through the pipeline as "pieces" in a pool: bytes plus, per byte,
 * the input offset it came from. */
#ifndef ST_TOK_INTERNAL_H
#define ST_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "streamtune/tokenizer.h"

/* ---- string -> int32 map ---- */
struct strmap {
    uint32_t *slots; /* index+1 into keys, 0 = empty */
    size_t cap;      /* power of two */
    const char **keys;
    uint32_t *klen;
    int32_t *vals;
    size_t n, kcap;
};
int strmap_put(struct strmap *m, const char *key, uint32_t len, int32_t val); /* 0 ok */
int32_t strmap_get(const struct strmap *m, const char *key, uint32_t len);  /* -1 absent */
void strmap_free(struct strmap *m);

/* ---- u64 -> u64 map (merges: (a<<32|b) -> (rank<<32|new_id); trie edges) ---- */
struct u64map {
    uint64_t *keys, *vals;
    uint8_t *used;
    size_t cap, n;
};
int u64map_put(struct u64map *m, uint64_t key, uint64_t val);
int u64map_get(const struct u64map *m, uint64_t key, uint64_t *val); /* 1 found */
void u64map_free(struct u64map *m);

/* ---- pipeline components ---- */
enum norm_type { N_NFC, N_NFD, N_NFKC, N_NFKD, N_LOWER, N_PREPEND, N_REPLACE, N_STRIP, N_SEQ };
struct normalizer {
    enum norm_type type;
    char *a, *b;         /* prepend: a; replace: pattern string a (or regex), content b */
    pcre2_code *re;      /* replace with a Regex pattern */
    int strip_left, strip_right;
    struct normalizer *items;
    int n_items;
};

enum split_behavior { SB_REMOVED, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS };
enum pre_type { P_SPLIT, P_BYTELEVEL, P_METASPACE, P_DIGITS, P_SEQ };
struct pretok {
    enum pre_type type;
    pcre2_code *re;      /* split regex (string patterns are escaped into a regex) */
    enum split_behavior behavior;
    int invert;
    int add_prefix_space, use_regex; /* ByteLevel */
    char replacement[8];             /* Metaspace, UTF-8 */
    int prepend_scheme;              /* 0 always, 1 first, 2 never */
    int split;                       /* Metaspace */
    int individual_digits;
    struct pretok *items;
    int n_items;
};

enum dec_type { D_BYTELEVEL, D_METASPACE, D_REPLACE, D_BYTEFALLBACK, D_FUSE, D_STRIP, D_SEQ };
struct decoder {
    enum dec_type type;
    char *a, *b; /* replace: pattern, content */
    char replacement[8];
    int prepend_scheme;
    char strip_content[8];
    int strip_start, strip_stop;
    struct decoder *items;
    int n_items;
};

struct added_token {
    char *content;
    uint32_t len;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
};

/* Template item: an added-by-template special token (ids) or the sequence itself. */
struct tmpl_item {
    int is_sequence;
    int32_t ids[4];
    int n_ids;
};

struct st_tokenizer {
    struct strmap vocab;        /* model vocab */
    char **id_to_str;           /* id -> token (vocab and added) */
    int32_t vocab_size;         /* max id + 1 */
    struct u64map merges;
    /* model options */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;
    char *cont_prefix, *eow_suffix;
    int32_t byte_ids[256];      /* <0xNN> ids when byte_fallback, else -1 */
    /* added tokens: two tries (raw-matched and normalized-matched), node 0 is the root */
    struct added_token *added;
    int n_added;
    struct u64map trie[2];      /* (node << 8 | byte) -> child node */
    int32_t *trie_term[2];      /* node -> added token index + 1 (0 = not terminal) */
    size_t trie_nodes[2], trie_cap[2];
    uint8_t *is_special;        /* per id */
    /* pipeline */
    struct normalizer *norm;
    struct pretok *pre;
    struct decoder *dec;
    struct tmpl_item *tmpl;
    int n_tmpl;
    int32_t bos_id, eos_id;
    /* byte-level tables */
    char bl_enc[256][4];        /* byte -> UTF-8 of its mapped char */
    uint8_t bl_enc_len[256];
    int16_t bl_dec[512];        /* mapped code point (< 512) -> byte, -1 when not mapped */
    char *arena;                /* storage of vocab strings */
};

/* ---- pieces ---- */
struct range {
    size_t off, len;
    int32_t origin; /* input offset where this piece's segment starts (Metaspace "first") */
};
struct pool {
    char *s;
    int32_t *orig; /* per byte */
    size_t n, cap;
    struct range *r;
    size_t nr, rcap;
};
int pool_reserve(struct pool *p, size_t extra);
int pool_push_range(struct pool *p, size_t off, size_t len, int32_t origin);
/* append bytes with one orig offset each (orig == NULL: all get `fill`) */
int pool_append(struct pool *p, const char *s, size_t len, const int32_t *orig, int32_t fill);
void pool_clear(struct pool *p);
void pool_free(struct pool *p);

/* ---- utf8 ---- */
/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when invalid. */
int utf8_valid_len(const unsigned char *s, size_t n);
/* Decode the code point at s (must be valid), returning its length. */
int utf8_decode(const unsigned char *s, uint32_t *cp);
int utf8_encode(uint32_t cp, char *out);
/* WHATWG/Python "replace": maximal invalid subparts become U+FFFD. Appends to p with offsets. */
int utf8_sanitize(struct pool *p, const char *s, size_t n);

/* ---- pipeline stages (tokenizer.c) ---- */
int normalize_piece(const struct normalizer *nm, struct pool *in, size_t i, struct pool *out);
int pretokenize(const struct pretok *pt, struct pool *in, struct pool *out);

#endif
