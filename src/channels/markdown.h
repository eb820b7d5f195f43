#ifndef NX_CHANNELS_MARKDOWN_H
#define NX_CHANNELS_MARKDOWN_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"

/* Agent text (CommonMark-ish: **bold**, *italic* / _italic_, ~~strike~~, `code`, fenced code
 * blocks, [links](url), # headings, - lists, > quotes) rewritten into what a messaging service
 * renders. One const table per target says how each construct is written; what the converter
 * does not understand stays as it was (escaped when the target is HTML). */

struct nx_md_style {
    bool is_html;            /* escape & < > (and " in attributes); links as <a href> */
    const char *bold[2];     /* open, close */
    const char *italic[2];
    const char *strike[2];
    const char *code[2];     /* inline code */
    const char *pre[2];      /* a fenced block without a language */
    const char *pre_lang[3]; /* with one: pre_lang[0] + language + pre_lang[1] ... pre_lang[2] */
    const char *quote[2];    /* around a run of "> " lines */
    const char *quote_line;  /* before each quoted line */
    const char *bullet;      /* replaces "- ", "* ", "+ " list markers */
    const char *rule;        /* replaces a --- / *** / ___ line */
};

/* Telegram Bot API HTML (parse_mode "HTML"). */
extern const struct nx_md_style nx_md_telegram;
/* WhatsApp: *bold*, _italic_, ~strike~, `code`, ```mono```, "> " quotes. */
extern const struct nx_md_style nx_md_whatsapp;

/* Appends the rendering of text[0..len) to out. Never fails; bounded work per byte. */
void nx_md_render(const struct nx_md_style *st, const char *text, size_t len, struct nx_buf *out);

/* One piece of a long HTML message. */
struct nx_md_chunk {
    char *html;  /* tags balanced: those open at a cut are closed here and reopened next time */
    char *plain; /* the same piece as plain text (tags dropped, entities decoded) */
};
/* Splits HTML (as nx_md_render makes for nx_md_telegram) into chunks of at most `limit` UTF-16
 * units of visible text (what Telegram counts after parsing entities), cutting where
 * nx_text_split would cut the visible text and never inside a tag or an entity. *out gets an
 * array (NULL when nothing is visible); returns the count. limit >= 1. */
size_t nx_md_split_html(const char *html, size_t len, size_t limit, struct nx_md_chunk **out);
void nx_md_chunks_free(struct nx_md_chunk *v, size_t n);

#endif
