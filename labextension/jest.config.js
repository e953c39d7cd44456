// Jest with ts-jest, as in the jupyterlab/extension-template; the sidebar model needs no browser, so
// the tests run in Node (whose fetch API provides Response).
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  testRegex: 'src/.*/.*.spec.ts[x]?$',
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  }
};
