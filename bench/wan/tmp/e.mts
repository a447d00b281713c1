import * as echarts from 'echarts';
import { Resvg } from '@resvg/resvg-js';
const c = echarts.init(null, null, { renderer: 'svg', ssr: true, width: 600, height: 400 });
c.setOption({ textStyle:{fontFamily:'DejaVu Sans'}, xAxis: { type: 'value' }, yAxis: { type: 'log' }, series: [{ type: 'line', data: [[0, 1], [10, 20]] }] });
const svg = c.renderToSVGString();
console.log(svg.length, svg.slice(0, 200));
const png = new Resvg(svg, { font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' } }).render().asPng();
console.log(png.length);
