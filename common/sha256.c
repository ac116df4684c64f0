#include <string.h>

#include <openssl/evp.h>

#include "imc.h"

int imc_sha256_init(imc_sha256 *h, imc_error *err)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	h->ctx = NULL;
	if (!ctx)
		return imc_err(err, ENOMEM, "sha256: out of memory");
	if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(ctx);
		return imc_err(err, EIO, "sha256: cannot initialise digest");
	}
	h->ctx = ctx;
	return 0;
}

void imc_sha256_update(imc_sha256 *h, const void *data, size_t len)
{
	EVP_DigestUpdate(h->ctx, data, len);
}

void imc_sha256_final_hex(imc_sha256 *h, char out[IMC_SHA256_HEX_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[32];
	unsigned int n = 0;

	EVP_DigestFinal_ex(h->ctx, md, &n);
	for (unsigned i = 0; i < 32; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[IMC_SHA256_HEX_LEN] = '\0';
	imc_sha256_free(h);
}

void imc_sha256_free(imc_sha256 *h)
{
	EVP_MD_CTX_free(h->ctx);
	h->ctx = NULL;
}

int imc_sha256_hex(const void *data, size_t len, char out[IMC_SHA256_HEX_LEN + 1], imc_error *err)
{
	imc_sha256 h;
	int r = imc_sha256_init(&h, err);

	if (r < 0)
		return r;
	imc_sha256_update(&h, data, len);
	imc_sha256_final_hex(&h, out);
	return 0;
}

int imc_digest_parse(const char *digest, char ret_hex[IMC_SHA256_HEX_LEN + 1], imc_error *err)
{
	static const char prefix[] = "sha256:";
	const char *hex;

	if (!digest || strncmp(digest, prefix, sizeof(prefix) - 1) != 0)
		return imc_err(err, EINVAL, "digest \"%.80s\": only sha256 digests are supported",
			       digest ? digest : "");
	hex = digest + sizeof(prefix) - 1;
	if (strlen(hex) != IMC_SHA256_HEX_LEN)
		return imc_err(err, EINVAL, "digest \"%.80s\": want 64 hex digits", digest);
	for (size_t i = 0; i < IMC_SHA256_HEX_LEN; i++)
		if (!((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f')))
			return imc_err(err, EINVAL, "digest \"%.80s\": not lowercase hexadecimal",
				       digest);
	memcpy(ret_hex, hex, IMC_SHA256_HEX_LEN + 1);
	return 0;
}
