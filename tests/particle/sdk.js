// Drives Particle's JavaScript SDK (particle-api-js) against hookd's api:
// every integration call (create, list, edit, delete; sandbox, product and
// org) and every webhook call (create, list, delete; sandbox and product).
// Prints one JSON object: each step's answer (`body`) or its error
// (`status`, `error`), for tests/particle_tools.rs to check against hookd's
// own api. Environment: HOOKD_API, ORG_TOKEN (org acme), USER_TOKEN (a
// user), FOREIGN_TOKEN (another org), RECEIVER (a URL prefix).

const Particle = require('particle-api-js');

const api = process.env.HOOKD_API;
const org = process.env.ORG_TOKEN;
const user = process.env.USER_TOKEN;
const foreign = process.env.FOREIGN_TOKEN;
const receiver = process.env.RECEIVER;
const particle = new Particle({ baseUrl: api });
const steps = {};

async function step(name, call) {
	try {
		const answer = await call();
		steps[name] = { ok: true, status: answer.statusCode, body: answer.body };
	} catch (e) {
		steps[name] = { ok: false, status: e.statusCode, error: e.shortErrorDescription || e.message };
	}
	return steps[name];
}

async function make() {
	// Integrations, org scope.
	const orgHook = await step('create_org', () => particle.createIntegration({
		org: 'acme', auth: org, event: 'sdk-org',
		settings: { integration_type: 'Webhook', url: `${receiver}/org`, products: [1, 2], requestType: 'POST' },
	}));
	await step('list_org', () => particle.listIntegrations({ org: 'acme', auth: org }));
	if (orgHook.ok) {
		await step('edit_org', () => particle.editIntegration({
			org: 'acme', auth: org, integrationId: orgHook.body.id,
			settings: { url: `${receiver}/org-edited` },
		}));
	}
	// Product scope.
	const productHook = await step('create_product', () => particle.createIntegration({
		product: 1, auth: org, event: 'sdk-product',
		settings: { integration_type: 'Webhook', url: `${receiver}/product`, noDefaults: true, json: { v: '{{{PARTICLE_EVENT_VALUE}}}' } },
	}));
	await step('list_product', () => particle.listIntegrations({ product: 1, auth: org }));
	if (productHook.ok) {
		await step('edit_product', () => particle.editIntegration({
			product: 1, auth: org, integrationId: productHook.body.id, event: 'sdk-product-2',
		}));
	}
	// Sandbox, one device (the SDK sends it as `deviceid`).
	const sandboxHook = await step('create_sandbox', () => particle.createIntegration({
		auth: user, event: 'sdk-sandbox', deviceId: 'e00fce68aaaaaaaaaaaaaaaa',
		settings: { integration_type: 'Webhook', url: `${receiver}/sandbox` },
	}));
	await step('list_sandbox', () => particle.listIntegrations({ auth: user }));
	if (sandboxHook.ok) {
		await step('edit_sandbox', () => particle.editIntegration({
			auth: user, integrationId: sandboxHook.body.id,
			settings: { headers: { 'X-From': 'sdk' } },
		}));
	}
	// Another org's token finds nothing of acme's.
	await step('foreign_list', () => particle.listIntegrations({ org: 'acme', auth: foreign }));
	if (orgHook.ok) {
		await step('foreign_edit', () => particle.editIntegration({
			org: 'acme', auth: foreign, integrationId: orgHook.body.id, settings: { url: `${receiver}/stolen` },
		}));
	}
	// Webhooks API: sandbox and product.
	const webhook = await step('create_webhook', () => particle.createWebhook({
		auth: user, event: 'sdk-webhook', url: `${receiver}/webhook`, device: 'e00fce68bbbbbbbbbbbbbbbb',
		rejectUnauthorized: false, noDefaults: true,
		hook: { method: 'PUT', headers: { 'X-Hook': 'yes' }, json: { d: '{{{PARTICLE_EVENT_VALUE}}}' },
			responseEvent: 'sdk-response', errorResponseEvent: 'sdk-error' },
	}));
	const productWebhook = await step('create_product_webhook', () => particle.createWebhook({
		auth: org, product: 2, event: 'sdk-product-webhook', url: `${receiver}/product-webhook`,
	}));
	await step('list_webhooks', () => particle.listWebhooks({ auth: user }));
	await step('list_product_webhooks', () => particle.listWebhooks({ auth: org, product: 2 }));
	// The token the other two ways Particle's API takes it (as its curl
	// examples send it), and a form body.
	await step('query_token', async () => {
		const r = await fetch(`${api}/v1/integrations?access_token=${encodeURIComponent(user)}`);
		return { statusCode: r.status, body: await r.json() };
	});
	const formHook = await step('form_create', async () => {
		const form = new URLSearchParams({
			access_token: org, event: 'form-hook', url: `${receiver}/form`, requestType: 'GET',
			'query[k]': 'v', noDefaults: 'true',
		});
		const r = await fetch(`${api}/v1/products/3/integrations`, { method: 'POST', body: form });
		return { statusCode: r.status, body: await r.json() };
	});
	await step('no_token', async () => {
		const r = await fetch(`${api}/v1/integrations`);
		return { statusCode: r.status, body: await r.json() };
	});
	// Deletes last, after the test has read what was made.
	steps.ids = {
		org: orgHook.body && orgHook.body.id,
		product: productHook.body && productHook.body.id,
		sandbox: sandboxHook.body && sandboxHook.body.id,
		webhook: webhook.body && webhook.body.id,
		product_webhook: productWebhook.body && productWebhook.body.id,
		form: formHook.body && formHook.body.id,
	};
}

// `node sdk.js delete '<ids>'`: deletes what `make` created, each the way
// the SDK does.
async function remove(ids) {
	await step('foreign_delete', () => particle.deleteIntegration({ org: 'acme', auth: foreign, integrationId: ids.org }));
	await step('delete_org', () => particle.deleteIntegration({ org: 'acme', auth: org, integrationId: ids.org }));
	await step('delete_product', () => particle.deleteIntegration({ product: 1, auth: org, integrationId: ids.product }));
	await step('delete_sandbox', () => particle.deleteIntegration({ auth: user, integrationId: ids.sandbox }));
	await step('delete_webhook', () => particle.deleteWebhook({ auth: user, hookId: ids.webhook }));
	await step('delete_product_webhook', () => particle.deleteWebhook({ auth: org, product: 2, hookId: ids.product_webhook }));
}

(async () => {
	if (process.argv[2] === 'delete') {
		await remove(JSON.parse(process.argv[3]));
	} else {
		await make();
	}
	process.stdout.write(JSON.stringify(steps));
})();
